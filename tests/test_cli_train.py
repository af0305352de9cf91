"""`rainier train` end to end, in subprocesses (the CLI sizes the emulated mesh itself)."""

import json
import math
from pathlib import Path

import pytest

from cli_runner import rainier



def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_train_writes_metrics_and_summary(tmp_path):
    metrics = tmp_path / "m.jsonl"
    out = rainier("train", "--parallel", "dp=2,fsdp=2,tp=2", "--steps", "3", "--batch", "8",
                  "--seq", "32", "--eval-every", "2", "--metrics", str(metrics))
    assert out.returncode == 0, out.stderr
    rows = read_metrics(metrics)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(r) >= {"step", "loss", "grad_norm", "lr", "tokens_per_s"}
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["lr"] > 0 and r["tokens_per_s"] > 0
    # Eval every 2 steps and at the end.
    assert ["eval_loss" in r for r in rows] == [False, True, True]
    assert "corpus: python-stdlib" in out.stdout and "sha256" in out.stdout
    assert "compiled in" in out.stdout and "throughput: median" in out.stdout
    assert "fsdp=2: crosses torus" in out.stdout


def test_metrics_file_is_appended_never_duplicated(tmp_path):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    out = rainier("train", "--steps", "1", "--batch", "8", "--seq", "16", "--metrics", str(metrics))
    assert out.returncode == 2 and "already holds steps up to 1" in out.stderr
    assert read_metrics(metrics) == [{"step": 1, "loss": 5.0}]   # untouched


def test_train_on_text_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    metrics = tmp_path / "m.jsonl"
    out = rainier("train", "--data", str(text), "--parallel", "fsdp=8", "--steps", "2", "--batch", "8",
                  "--seq", "32", "--metrics", str(metrics))
    assert out.returncode == 0, out.stderr
    assert str(text) in out.stdout and len(read_metrics(metrics)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("mesh,parallel,batch", [
    ("trn2-instance", "fsdp=16,tp=4", "64"),        # 64 emulated ranks
    ("trn2-ultraserver", "fsdp=64,tp=4", "256"),    # 256 emulated ranks
])
def test_full_size_meshes_train(tmp_path, mesh, parallel, batch):
    metrics = tmp_path / "m.jsonl"
    out = rainier("train", "--mesh", mesh, "--parallel", parallel, "--batch", batch, "--steps", "3",
                  "--metrics", str(metrics), timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = read_metrics(metrics)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
