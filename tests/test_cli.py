"""The `rainier` command line, run as a user runs it: one subprocess per command.

Bad input to `rainier train` / `rainier mesh show` must give exactly one line on stderr that starts
with `rainier: error:` and names the offending flag or key, exit code 2, no traceback, and nothing
compiled. Every case is validated before JAX starts, so each subprocess takes about a second; the
selected cases run concurrently (one worker per CPU) in a module fixture, and each parametrized
test checks its own result.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cli_runner import rainier

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60
BUILTIN_MESHES = ("trn2-instance", "trn2-ultraserver", "trn1-instance", "trn2-mini-8", "trn2-mini-16")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return rainier(*args, timeout=TIMEOUT_S)


# ---------------------------------------------------------------------------------------------
# Input files the cases point at (written once per module under a temporary directory)

TINY_TOML = (REPO / "models" / "tiny.toml").read_text()
MINI8_TOML = (REPO / "meshes" / "trn2-mini-8.toml").read_text()

# 12 query heads, 3 kv heads: tp=4 divides n_heads (12), mlp_dim (384) and vocab_size (256) and
# fsdp=1 divides d_model, so on trn2-mini-8 with dp=2,tp=4 only the kv-head rule can reject it
# (3 % 4 != 0 and 4 % 3 != 0).
KV_MODEL_TOML = """\
name = "kv3"
vocab_size = 256
d_model = 192
n_layers = 2
n_heads = 12
n_kv_heads = 3
mlp_dim = 384
"""


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the copied file"
    return text.replace(old, new)


def _write_inputs(d: Path) -> None:
    # models
    (d / "kv3.toml").write_text(KV_MODEL_TOML)
    (d / "model_unknown_key.toml").write_text(TINY_TOML + "n_experts = 8\n")
    (d / "model_wrong_type.toml").write_text(_replace_once(TINY_TOML, "d_model = 128", 'd_model = "128"'))
    (d / "model_float_for_int.toml").write_text(_replace_once(TINY_TOML, "n_layers = 8", "n_layers = 2.5"))
    (d / "model_kv_not_dividing_heads.toml").write_text(
        _replace_once(TINY_TOML, "n_kv_heads = 4", "n_kv_heads = 3"))
    (d / "model_not_utf8.toml").write_bytes(TINY_TOML.encode() + b"# \xff\xfe\n")
    # meshes: copies of the built-in trn2-mini-8, each corrupted in one place
    (d / "mesh_unknown_key.toml").write_text(
        _replace_once(MINI8_TOML, 'name = "trn2-mini-8"\n', 'name = "trn2-mini-8"\ncolour = "blue"\n'))
    (d / "mesh_wrong_type.toml").write_text(
        _replace_once(MINI8_TOML, "instances = 2 ", 'instances = "two" '))
    (d / "mesh_nested_unknown_key.toml").write_text(
        _replace_once(MINI8_TOML, "[links.torus]\n", "[links.torus]\nbandwidth_gbit = 2048\n"))
    (d / "mesh_nested_wrong_type.toml").write_text(
        _replace_once(MINI8_TOML, "hbm_gib = 96.0 ", 'hbm_gib = "lots" '))
    (d / "mesh_bad_syntax.toml").write_text(_replace_once(MINI8_TOML, "instances = 2 ", "instances = = 2 "))
    (d / "mesh_missing_key.toml").write_text(_replace_once(MINI8_TOML, "default_lnc = 2 ", "# "))
    (d / "mesh_not_utf8.toml").write_bytes(MINI8_TOML.encode() + b"# \xff\xfe\n")
    # 2 instances x 3x1 chips x 2 ranks = 12 ranks: tp=4 takes the 2 cores of a chip, then needs a
    # factor 2 of the x dimension (3), which does not exist.
    (d / "mesh_3x1.toml").write_text(_replace_once(MINI8_TOML, "torus = [2, 1]", "torus = [3, 1]"))
    # data
    (d / "empty.txt").write_bytes(b"")
    (d / "empty_dir").mkdir()
    (d / "hidden_only_dir").mkdir()
    (d / "hidden_only_dir" / ".notes").write_text("hidden files are skipped\n")
    tokens = np.full(5000, 65, dtype="<u2")
    tokens[123] = 300  # outside the tiny model's 256-token vocabulary
    tokens.tofile(d / "big_token.bin")
    (d / "odd.bin").write_bytes(b"abc")
    (d / "short.txt").write_text("too short for a 128-token window\n")
    # metrics
    (d / "metrics_dir").mkdir()
    (d / "done.jsonl").write_text('{"step": 1, "loss": 5.5, "grad_norm": 1.0, "lr": 0.0003, "tokens_per_s": 1000.0}\n')
    (d / "not_metrics.jsonl").write_text("hello, world\n")


# ---------------------------------------------------------------------------------------------
# Bad input: one case per problem; `{tmp}` in an argument is the directory of the files above


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    names: tuple[str, ...]  # each must appear in the error line (the flag or key, and the culprit)


def T(*args: str) -> tuple[str, ...]:
    return ("train", *args)


def S(*args: str) -> tuple[str, ...]:
    return ("mesh", "show", *args)


CASES = [
    # --parallel: product, axes, sizes, syntax
    Case("layout-product-not-ranks", T("--parallel", "dp=2,tp=2"), ("--parallel", "8")),
    Case("layout-product-too-big", T("--parallel", "dp=4,tp=4"), ("--parallel", "8")),
    Case("show-layout-product-not-ranks", S("trn2-mini-8", "--parallel", "dp=3"), ("--parallel",)),
    Case("unknown-axis", T("--parallel", "dp=4,xp=2"), ("--parallel", "xp")),
    Case("show-unknown-axis", S("trn2-mini-8", "--parallel", "dp=2,ep=4"), ("--parallel", "ep")),
    Case("axis-size-zero", T("--parallel", "dp=0,tp=8"), ("--parallel", "dp=0")),
    Case("axis-size-negative", T("--parallel", "dp=8,tp=-2"), ("--parallel", "tp=-2")),
    Case("malformed-no-equals", T("--parallel", "dp8"), ("--parallel", "dp8")),
    Case("malformed-not-a-number", T("--parallel", "dp=two,tp=4"), ("--parallel", "dp=two")),
    Case("malformed-empty-part", T("--parallel", "dp=4,,tp=2"), ("--parallel",)),
    Case("malformed-trailing-comma", T("--parallel", "dp=8,"), ("--parallel",)),
    Case("malformed-empty", T("--parallel", ""), ("--parallel",)),
    Case("malformed-uppercase", T("--parallel", "DP=8"), ("--parallel", "DP=8")),
    Case("axis-given-twice", T("--parallel", "dp=2,dp=4"), ("--parallel", "dp")),
    # pipeline settings
    Case("pp-1f1b-too-few-microbatches", T("--parallel", "pp=2,dp=4"), ("--microbatches 1", "1f1b")),
    Case("pp-layers-not-divisible", T("--parallel", "pp=8", "--schedule", "interleaved", "--virtual-stages", "2",
                                      "--microbatches", "8"), ("pp 8", "layers")),
    Case("interleaved-without-virtual-stages", T("--parallel", "pp=2,dp=4", "--schedule", "interleaved",
                                                 "--microbatches", "4"), ("--virtual-stages 1",)),
    Case("unknown-schedule", T("--parallel", "pp=2,dp=4", "--schedule", "zigzag", "--microbatches", "2"),
         ("--schedule zigzag",)),
    Case("batch-not-divisible-by-microbatches", T("--parallel", "pp=2,dp=4", "--microbatches", "3",
                                                  "--batch", "16"), ("--batch 16", "microbatches")),
    Case("microbatches-zero", T("--microbatches", "0"), ("--microbatches 0",)),
    Case("layout-cannot-be-placed", T("--mesh", "{tmp}/mesh_3x1.toml", "--parallel", "dp=3,tp=4", "--batch", "30"),
         ("--parallel", "tp=4")),
    Case("show-layout-cannot-be-placed", S("{tmp}/mesh_3x1.toml", "--parallel", "dp=3,tp=4"),
         ("--parallel", "tp=4")),
    # the layout against the model's shapes and the batch
    Case("tp-not-dividing-heads", T("--mesh", "trn2-mini-16", "--parallel", "dp=1,tp=16"),
         ("--parallel", "tp=16", "n_heads")),
    Case("kv-heads-vs-tp", T("--model", "{tmp}/kv3.toml", "--parallel", "dp=2,tp=4"),
         ("--parallel", "tp=4", "n_kv_heads")),
    Case("batch-not-divisible-by-dp", T("--parallel", "dp=8", "--batch", "12"), ("--batch", "12")),
    Case("batch-not-divisible-by-dp-fsdp", T("--parallel", "dp=2,fsdp=4", "--batch", "12"), ("--batch", "12")),
    # mesh and model names/paths
    Case("unknown-mesh-name", T("--mesh", "trn9-huge"), ("--mesh", "trn9-huge")),
    Case("show-unknown-mesh-name", S("trn9-huge"), ("trn9-huge",)),
    Case("unknown-model-name", T("--model", "gpt-17"), ("--model", "gpt-17")),
    Case("mesh-path-missing", T("--mesh", "{tmp}/no-such-mesh.toml"), ("--mesh", "no-such-mesh.toml")),
    Case("show-mesh-path-missing", S("{tmp}/no-such-mesh.toml"), ("no-such-mesh.toml",)),
    Case("model-path-missing", T("--model", "{tmp}/no-such-model.toml"), ("--model", "no-such-model.toml")),
    # corrupt TOML files
    Case("model-unknown-key", T("--model", "{tmp}/model_unknown_key.toml"), ("n_experts",)),
    Case("model-wrong-type", T("--model", "{tmp}/model_wrong_type.toml"), ("d_model",)),
    Case("model-float-for-int", T("--model", "{tmp}/model_float_for_int.toml"), ("n_layers",)),
    Case("model-kv-heads-not-dividing-heads", T("--model", "{tmp}/model_kv_not_dividing_heads.toml"),
         ("n_kv_heads",)),
    Case("model-not-utf8", T("--model", "{tmp}/model_not_utf8.toml"), ("model_not_utf8.toml", "UTF-8")),
    Case("mesh-unknown-key", T("--mesh", "{tmp}/mesh_unknown_key.toml"), ("colour",)),
    Case("show-mesh-unknown-key", S("{tmp}/mesh_unknown_key.toml"), ("colour",)),
    Case("mesh-wrong-type", T("--mesh", "{tmp}/mesh_wrong_type.toml"), ("instances",)),
    Case("show-mesh-wrong-type", S("{tmp}/mesh_wrong_type.toml"), ("instances",)),
    Case("mesh-nested-unknown-key", T("--mesh", "{tmp}/mesh_nested_unknown_key.toml"),
         ("bandwidth_gbit",)),
    Case("mesh-nested-wrong-type", T("--mesh", "{tmp}/mesh_nested_wrong_type.toml"), ("hbm_gib",)),
    Case("mesh-bad-toml-syntax", T("--mesh", "{tmp}/mesh_bad_syntax.toml"), ("mesh_bad_syntax.toml", "TOML")),
    Case("mesh-missing-key", T("--mesh", "{tmp}/mesh_missing_key.toml"), ("default_lnc",)),
    Case("mesh-not-utf8", T("--mesh", "{tmp}/mesh_not_utf8.toml"), ("mesh_not_utf8.toml", "UTF-8")),
    # --lnc
    Case("lnc-unsupported", T("--lnc", "1"), ("--lnc", "1")),
    Case("lnc-zero", T("--lnc", "0"), ("--lnc", "0")),
    Case("show-lnc-unsupported", S("trn2-instance", "--lnc", "3"), ("--lnc", "3")),
    Case("lnc-not-an-integer", T("--lnc", "two"), ("--lnc", "two")),
    # --data
    Case("data-missing", T("--data", "{tmp}/no-such-corpus.txt"), ("--data", "no-such-corpus.txt")),
    Case("data-empty-file", T("--data", "{tmp}/empty.txt"), ("--data", "empty.txt")),
    Case("data-empty-dir", T("--data", "{tmp}/empty_dir"), ("--data", "empty_dir")),
    Case("data-dir-only-hidden-files", T("--data", "{tmp}/hidden_only_dir"), ("--data", "hidden_only_dir")),
    Case("data-bin-token-out-of-vocab", T("--data", "{tmp}/big_token.bin"), ("--data", "300")),
    Case("data-bin-odd-size", T("--data", "{tmp}/odd.bin"), ("--data", "odd.bin")),
    Case("data-too-short-for-seq", T("--data", "{tmp}/short.txt"), ("--data", "--seq")),
    # --metrics
    Case("metrics-dir-missing", T("--metrics", "{tmp}/no-such-dir/metrics.jsonl"), ("--metrics", "no-such-dir")),
    Case("metrics-is-a-directory", T("--metrics", "{tmp}/metrics_dir"), ("--metrics", "metrics_dir")),
    Case("metrics-already-has-step-1", T("--metrics", "{tmp}/done.jsonl"), ("--metrics", "done.jsonl")),
    Case("metrics-not-a-metrics-file", T("--metrics", "{tmp}/not_metrics.jsonl"), ("--metrics", "not_metrics.jsonl")),
    # run settings
    Case("steps-zero", T("--steps", "0"), ("--steps", "0")),
    Case("steps-negative", T("--steps", "-1"), ("--steps", "-1")),
    Case("steps-not-an-integer", T("--steps", "abc"), ("--steps", "abc")),
    Case("steps-float", T("--steps", "1.5"), ("--steps", "1.5")),
    Case("batch-zero", T("--batch", "0"), ("--batch", "0")),
    Case("seq-zero", T("--seq", "0"), ("--seq", "0")),
    Case("lr-zero", T("--lr", "0"), ("--lr", "0")),
    Case("lr-negative", T("--lr=-1e-3"), ("--lr", "-0.001")),
    # argparse (3.11) reads "-1e-3" as an option, not a value: still one line naming --lr.
    Case("lr-negative-exponent-form", T("--lr", "-1e-3"), ("--lr",)),
    Case("lr-nan", T("--lr", "nan"), ("--lr", "nan")),
    Case("seed-negative", T("--seed", "-1"), ("--seed", "-1")),
    Case("eval-every-negative", T("--eval-every", "-5"), ("--eval-every", "-5")),
    Case("remat-unknown", T("--remat", "some"), ("--remat", "some")),
    # the command line itself
    Case("unknown-flag", T("--bogus-flag", "1"), ("--bogus-flag",)),
    Case("show-unknown-flag", S("trn2-mini-8", "--tp", "2"), ("--tp",)),
    Case("missing-flag-value", T("--steps"), ("--steps",)),
    Case("show-missing-mesh-name", S(), ("name",)),
    Case("unknown-command", ("serve",), ("serve",)),
]

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def _argv(case: Case, tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in case.argv]


def _run_case(case: Case, tmp: Path):
    try:
        return run_cli(*_argv(case, tmp))
    except subprocess.TimeoutExpired as e:
        return e


@pytest.fixture(scope="module")
def bad_input_results(request, tmp_path_factory):
    """Runs every selected bad-input case concurrently; returns (tmp dir, {case id: future})."""
    tmp = tmp_path_factory.mktemp("cli_inputs")
    _write_inputs(tmp)
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input_is_one_line_exit_2"
                and hasattr(item, "callspec")}
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
    request.addfinalizer(lambda: pool.shutdown(wait=True, cancel_futures=True))
    futures = {c.id: pool.submit(_run_case, c, tmp) for c in CASES if c.id in selected}
    return tmp, futures


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_one_line_exit_2(case, bad_input_results):
    tmp, futures = bad_input_results
    proc = futures[case.id].result()
    cmd = "rainier " + " ".join(_argv(case, tmp))
    assert not isinstance(proc, subprocess.TimeoutExpired), f"{cmd}: no answer within {TIMEOUT_S} s"
    detail = f"{cmd}\n--- exit {proc.returncode}; stderr:\n{proc.stderr}--- stdout:\n{proc.stdout[-2000:]}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one line on stderr\n{detail}"
    line = lines[0]
    assert line.startswith("rainier: error:"), detail
    for name in case.names:
        assert name in line, f"the error line should name {name!r}\n{detail}"
    # Everything is validated before anything is printed (and before JAX starts).
    assert proc.stdout == "", detail


# ---------------------------------------------------------------------------------------------
# Good input


def _ok(*args: str) -> subprocess.CompletedProcess:
    proc = run_cli(*args)
    assert proc.returncode == 0, f"rainier {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    return proc


def test_mesh_show_names_each_axis_link_class():
    out = _ok("mesh", "show", "trn2-mini-8", "--parallel", "dp=2,fsdp=2,tp=2").stdout
    # tp stays on a chip, fsdp crosses the torus inside an instance, dp the ring between instances.
    assert "tp=2: crosses on_chip" in out
    assert "fsdp=2: crosses torus" in out
    assert "dp=2: crosses ring" in out
    assert "not rings" not in out


def test_mesh_show_warns_when_tp_groups_are_not_rings():
    # tp=8 at LNC=2 spans two chips: a line, not a ring.
    out = _ok("mesh", "show", "trn2-instance", "--parallel", "dp=8,tp=8").stdout
    warnings = [l for l in out.splitlines() if "not rings" in l]
    assert len(warnings) == 1 and "tp=8" in warnings[0], out[-2000:]
    # tp=4 stays inside one chip.
    out = _ok("mesh", "show", "trn2-instance", "--parallel", "dp=16,tp=4").stdout
    assert "not rings" not in out
    assert "tp=4: crosses on_chip" in out


def test_mesh_show_lnc1_doubles_trn2_ranks():
    head = _ok("mesh", "show", "trn2-instance", "--lnc", "1").stdout.splitlines()[0]
    assert "128 ranks" in head and "LNC=1" in head, head


def test_mesh_list_shows_builtin_meshes():
    out = _ok("mesh", "list").stdout
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert sorted(listed) == sorted(BUILTIN_MESHES), out
    assert "8 ranks" in next(l for l in out.splitlines() if l.startswith("trn2-mini-8 "))
