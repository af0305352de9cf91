"""The parity harness: it passes the foundation's layouts, and it catches real bugs.

The bound is the harness's own (rainier_jax/parity/harness.py, docs/PARITY.md): rel_l2 ≤ k·C^depth·eps
per gradient tensor and per layer, with k and C set once from known-good layouts.
"""

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from cli_runner import rainier
from programs import RUN, TINY, program_for
from rainier_jax.train import data
from rainier_jax.parity.harness import Bound, run_parity
from rainier_jax.train.loop import train

EPS32 = float(np.finfo(np.float32).eps)
FOUNDATION_LAYOUTS = ["dp=8", "fsdp=8", "tp=8", "dp=2,fsdp=2,tp=2"]


@pytest.fixture(scope="module")
def corpus():
    return data.synthetic_corpus()


@pytest.fixture(scope="module")
def single():
    return program_for("single")


def check(ref, cand, corpus, kind="derived", **kw):
    return run_parity(ref, cand, corpus, bound=Bound(kind, EPS32, **kw), reference_name="ref",
                      candidate_name="cand")


@pytest.mark.parametrize("layout", FOUNDATION_LAYOUTS)
def test_foundation_layouts_pass(layout, single, corpus):
    result = check(single, program_for(layout), corpus)
    assert result.passed, result.first_violation
    assert result.free_ok
    # Every parameter of the model was compared, each stacked tensor per layer.
    assert len(result.tensors) == 3 + 9 * TINY.n_layers
    assert all(t.rel_l2 > 0 for t in result.tensors[:3])   # a real comparison, not identical bits


def test_initial_parameters_are_bit_identical_across_layouts():
    ref = jax.device_get(program_for("single").init().params)
    for layout in ("tp=8", "dp=2,fsdp=2,tp=2"):
        got = jax.device_get(program_for(layout).init().params)
        jax.tree.map(np.testing.assert_array_equal, got, ref)


def test_identical_layouts_are_bitwise_equal(corpus):
    prog = program_for("dp=2,fsdp=2,tp=2")
    result = check(prog, program_for("dp=2,fsdp=2,tp=2"), corpus, kind="bitwise")
    assert result.passed, result.first_violation
    assert all(t.rel_l2 == 0.0 and t.max_abs == 0.0 for t in result.tensors)
    assert result.loss_ref == result.loss_cand and result.free_loss_ref == result.free_loss_cand


def _with_grads(program, transform):
    """The same program, its gradients passed through `transform(params, batch, loss, grads)`."""
    inner = program.grads

    def grads(state, batch):
        loss, g = inner(state, batch)
        return transform(state, batch, loss, g)
    return dataclasses.replace(program, grads=grads)


def test_harness_fails_on_a_perturbed_gradient(single, corpus):
    # One tensor's gradient off by 1e-4 relative: far below anything a loss curve would show.
    def perturb(state, batch, loss, g):
        g = dict(g, layers=dict(g["layers"], w_up=g["layers"]["w_up"] * (1 + 1e-4)))
        return loss, g
    result = check(single, _with_grads(program_for("dp=2,fsdp=2,tp=2"), perturb), corpus)
    assert not result.passed
    assert result.first_violation.startswith("gradient layers/w_up[")
    assert {t.path.split("[")[0] for t in result.tensors if not t.ok} == {"layers/w_up"}


def test_harness_fails_on_a_dropped_data_parallel_reduction(single, corpus):
    # What one data-parallel replica holds if the gradient all-reduce is dropped: the gradient of
    # its own half of the batch.
    cand = program_for("dp=2,fsdp=2,tp=2")
    half = RUN.batch // 2

    def local_only(state, batch, loss, g):
        return cand.grads(state, jax.device_put(batch[:half], cand.batch_sharding))
    result = check(single, _with_grads(cand, local_only), corpus)
    assert not result.passed
    assert "loss at step 1" in result.first_violation or "gradient" in result.first_violation
    assert sum(not t.ok for t in result.tensors) > len(result.tensors) // 2


# Golden losses (free-running, 3 steps, tiny model, in-code synthetic corpus, batch 16 × seq 64):
# recorded with jax 0.10.2 on x86_64. Set RAINIER_UPDATE_GOLDEN=1 to rewrite after a deliberate
# change. Tolerance: step 1 is a loss at identical parameters, so the harness's loss bound applies
# (k·C^(L+1)·eps); later steps come after Adam updates, so the free-running bound applies.
GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"
GOLDEN_LAYOUTS = ["single", "dp=8", "tp=8", "dp=2,fsdp=2,tp=2"]


def test_golden_losses(corpus):
    from rainier_jax.parity.harness import FREE_LOSS_RTOL
    fresh = {}
    for layout in GOLDEN_LAYOUTS:
        records = []
        train(program_for(layout), corpus, on_step=records.append)
        fresh[layout] = [r.loss for r in records]
    if os.environ.get("RAINIER_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(fresh, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    step1 = Bound("derived", EPS32).limit(TINY.n_layers + 1)
    for layout in GOLDEN_LAYOUTS:
        got, want = fresh[layout], golden[layout]
        assert abs(got[0] - want[0]) <= step1 * want[0], layout
        np.testing.assert_allclose(got[1:], want[1:], rtol=FREE_LOSS_RTOL, err_msg=layout)


# --- the command ------------------------------------------------------------------------------

def test_cli_report_passes_and_is_reproducible(tmp_path):
    args = ["parity", "--parallel", "dp=4,tp=2", "--steps", "2", "--batch", "8", "--seq", "32"]
    first = rainier(*args, "--report", str(tmp_path / "a"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "verdict: PASS" in first.stdout
    second = rainier(*args, "--report", str(tmp_path / "b"))
    assert second.returncode == 0 and second.stdout == first.stdout
    for name in ("report.json", "loss_diff.png", "grad_error_by_layer.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["verdict"] == "pass" and report["bound_kind"] == "derived"
    assert report["bound"].startswith("derived: rel_l2 <= k * C^depth * eps")
    assert [s["step"] for s in report["steps"]] == [1, 2]
    assert set(report["steps"][0]) == {"step", "loss_ref", "loss_cand"}
    assert {"path", "rel_l2", "max_abs", "limit"} <= set(report["tensors"][0])
    assert report["environment"]["jax"] == jax.__version__ and "xla_flags" in report["environment"]
    ratios = [t["rel_l2"] / t["limit"] for t in report["tensors"]]
    assert ratios == sorted(ratios, reverse=True)            # worst first


def test_cli_exits_1_naming_the_first_violation(tmp_path):
    # A tolerance below what reordered fp32 sums can meet: the harness must say so, not pass.
    out = rainier("parity", "--parallel", "tp=8", "--steps", "1", "--batch", "8", "--seq", "32",
                  "--tolerance", "1e-9", "--report", str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "verdict: FAIL — " in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "fail" and report["bound_kind"] == "override"
    assert report["first_violation"] and report["first_violation"] in out.stdout


@pytest.mark.parametrize("args,needle", [
    (["--parallel", "dp=2,xp=4"], "unknown axis"),
    (["--parallel", "dp=8", "--reference", "dp=16"], "--reference dp=16"),
    (["--parallel", "dp=8", "--steps", "0"], "--steps 0"),
    (["--parallel", "dp=8", "--matrix"], "exactly one"),
    (["--parallel", "dp=8", "--tolerance", "0"], "--tolerance"),
    (["--parallel", "dp=8", "--precision", "bf17"], "--precision bf17: unknown precision"),
    (["--parallel", "dp=8", "--reference", "dp=8", "--batch", "4"], "--batch 4"),
    (["--parallel", "tp=8", "--reference", "dp=8", "--batch", "12"], "--reference dp=8"),
])
def test_cli_bad_input(args, needle):
    out = rainier("parity", *args, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rainier: error:") and needle in lines[0], out.stderr
