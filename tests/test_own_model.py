"""A user's own Flax NNX model through the commands, as users meet them: `rainier train`,
`parity` and `estimate --compiled` with `--model path/to/model.py:FACTORY` (scripts/gpt2_model.py, a
GPT-2-style model that is not a Llama), checkpoints, `--resume` (bitwise, and onto another
layout with a pipeline), and bad input — one line, exit 2, before anything compiles.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from cli_runner import ROOT, rainier
from rainier_jax.parity.harness import FREE_LOSS_RTOL
from rainier_jax.train.checkpoint import record

GPT2 = "scripts/gpt2_model.py:tiny_gpt2"
TRAIN = ("train", "--model", GPT2, "--steps", "8", "--batch", "16", "--seq", "64", "--eval-every", "0")

# A model without the pipeline contract (no embed / blocks / head): a bag of embeddings, whose
# output bias has no logical names.
FLAT_MODEL = '''
from flax import nnx

class Flat(nnx.Module):
    def __init__(self, rngs):
        self.table = nnx.Embed(256, 32, rngs=rngs,
                               embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")))
        self.out = nnx.Linear(32, 256, rngs=rngs,
                              kernel_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("embed", "vocab")))

    def __call__(self, tokens):
        return self.out(self.table(tokens))

def make(rngs):
    return Flat(rngs)

def broken(rngs):
    raise RuntimeError("no weights today")
'''


def losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """8 steps of the GPT-2 file on trn2-mini-8 (dp=8), checkpoints at 4 and 8."""
    d = tmp_path_factory.mktemp("own")
    r = rainier(*TRAIN, "--checkpoint-dir", str(d / "ckpt"), "--checkpoint-every", "4", "--metrics", str(d / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert record.steps_on_disk(d / "ckpt") == [4, 8]
    (d / "out.txt").write_text(r.stdout)
    return d


def test_training_a_model_file_learns(reference):
    out = (reference / "out.txt").read_text()
    assert re.search(r"model \S+gpt2_model\.py:tiny_gpt2: [\d,]+ parameters", out), out
    seen = losses(reference / "m.jsonl")
    assert sorted(seen) == list(range(1, 9))
    assert seen[8] < seen[1] - 0.5, seen   # from ~ln 256 = 5.5: a model that trains, not noise
    saved = record.newest_intact(reference / "ckpt").record.experiment.model
    assert saved.file == str(ROOT / "scripts" / "gpt2_model.py") and saved.factory == "tiny_gpt2"
    assert len(saved.sha256) == 64


def test_resume_is_bitwise(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", ckpt)
    shutil.rmtree(ckpt / "8")
    # No --model: the checkpoint's record names the file.
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--metrics", str(tmp_path / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert losses(tmp_path / "m.jsonl") == {t: v for t, v in losses(reference / "m.jsonl").items() if t > 4}


def test_restore_onto_a_pipeline_layout(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", ckpt)
    shutil.rmtree(ckpt / "8")
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--parallel", "pp=2,dp=2,tp=2",
                "--microbatches", "2", "--metrics", str(tmp_path / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "saved as pp=1,dp=8" in r.stdout
    ref, got = losses(reference / "m.jsonl"), losses(tmp_path / "m.jsonl")
    assert sorted(got) == [5, 6, 7, 8]
    # Another layout reorders fp32 sums: the free-running loss bound of the parity harness.
    assert all(abs(got[t] - ref[t]) <= FREE_LOSS_RTOL * ref[t] for t in got), (got, ref)


@pytest.mark.parametrize("layout", ["dp=2,fsdp=2,tp=2", "tp=8"])
def test_parity_passes_with_the_derived_bound(layout):
    r = rainier("parity", "--model", GPT2, "--parallel", layout, "--steps", "2", "--batch", "8", "--seq", "32")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout and "derived" in r.stdout, r.stdout


def test_estimate_compiled_on_a_trn2_instance():
    r = rainier("estimate", "--model", GPT2, "--mesh", "trn2-instance", "--parallel", "fsdp=16,tp=4",
                "--batch", "16", "--seq", "64", "--compiled", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    compiled = out["compiled"]
    assert out["ranks"] == 64 and compiled["hbm_per_rank_bytes"] > 0 and compiled["dot_flops_per_rank"] > 0
    kinds = {(c["kind"], tuple(c["axes"])) for c in compiled["collective_bytes"]}
    assert ("all-gather", ("fsdp",)) in kinds, kinds    # fsdp gathers the weights it splits


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    path = tmp_path_factory.mktemp("flat") / "flat.py"
    path.write_text(FLAT_MODEL)
    return path


def one_line_exit_2(r, *phrases):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_bad_model_input_is_one_line(flat, tmp_path):
    short = ("--steps", "1", "--batch", "8", "--seq", "16")
    one_line_exit_2(rainier("train", "--model", str(tmp_path / "nope.py") + ":make", *short),
                    "--model", "nope.py")
    one_line_exit_2(rainier("train", "--model", f"{flat}:broken", *short), "RuntimeError", "no weights today")
    one_line_exit_2(rainier("train", "--model", f"{flat}:make", "--parallel", "pp=2,dp=4", "--microbatches", "2",
                            *short),
                    "--parallel", "pp=2", "docs/OWN_MODEL.md")
    one_line_exit_2(rainier("train", "--model", f"{flat}:make", "--precision", "fp8", *short),
                    "--precision fp8", "bf16-mixed")
    one_line_exit_2(rainier("estimate", "--model", f"{flat}:make", "--mesh", "trn2-mini-8", "--parallel", "dp=8",
                            "--batch", "8"), "--compiled")


def test_a_changed_model_file_is_refused_on_resume(flat, tmp_path):
    model = tmp_path / "mine.py"
    model.write_text(flat.read_text())
    ckpt = tmp_path / "ckpt"
    r = rainier("train", "--model", f"{model}:make", "--steps", "1", "--batch", "8", "--seq", "16",
                "--checkpoint-dir", str(ckpt))
    assert r.returncode == 0, r.stderr
    assert ("note: 1 parameter tensor (256 parameters, 1,024 bytes in fp32; first: out/bias) carries no "
            "logical axis names and is replicated on every rank") in r.stderr
    model.write_text(flat.read_text() + "\n# edited\n")
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--steps", "2")
    one_line_exit_2(r, "--resume", "changed", "sha256")
