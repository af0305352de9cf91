"""Precision policies: stochastic rounding, loss scaling, fp8 quantisation, and every preset training."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rainier_jax.train import data as data_lib
from rainier_jax.model import numerics
from rainier_jax.parity.harness import Bound, run_parity
from rainier_jax.spec.precision import PRESETS
from tests.cli_runner import rainier
from tests.programs import RUN, TINY, program_for

BF16 = ml_dtypes.bfloat16


@pytest.fixture(scope="module")
def corpus():
    return data_lib.load_corpus(None, TINY.vocab_size, RUN.seq)


def _neighbours(x: np.ndarray):
    """The bf16 values just below and above each fp32 value (equal when x is representable)."""
    down = x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    lo = down.view(np.float32)
    hi = (down + np.uint32(0x10000)).view(np.float32)
    lo, hi = np.where(x >= 0, lo, hi), np.where(x >= 0, hi, lo)   # magnitude truncation, by sign
    exact = lo == x
    return np.where(exact, x, np.minimum(lo, hi)), np.where(exact, x, np.maximum(lo, hi))


# --- stochastic rounding ----------------------------------------------------------------------

def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=6), [1 + 2 ** -10, -3.0e-3, 1e-30]]).astype(np.float32)
    n = 20_000
    x = jnp.asarray(np.repeat(values[:, None], n, axis=1))
    bits = numerics.random_bits(x.shape, seed=0, step=0, tensor_id=1)
    y = np.asarray(numerics.round_stochastic_bf16(x, bits).astype(jnp.float32))
    lo, hi = _neighbours(values)
    for i, v in enumerate(values):
        assert set(np.unique(y[i])) <= {lo[i], hi[i]}, v
        # Rounding up with probability p = (v − lo)/(hi − lo): the mean of n roundings has standard
        # deviation (hi − lo)·√(p(1−p)/n). Allow 5σ (a false alarm about once in 1.7 million).
        gap = hi[i] - lo[i]
        p = (v - lo[i]) / gap if gap else 0.0
        sigma = gap * np.sqrt(p * (1 - p) / n)
        assert abs(y[i].astype(np.float64).mean() - v) <= 5 * sigma + 1e-12 * abs(v), (v, p)


def test_stochastic_rounding_differs_from_nearest_and_keeps_non_finite():
    x = jnp.asarray(np.float32([1 + 2 ** -9, np.inf, -np.inf, np.nan] * 256))
    y = numerics.round_stochastic_bf16(x, numerics.random_bits(x.shape, seed=3, step=7, tensor_id=5))
    ups = np.asarray(y[::4].astype(jnp.float32)) > 1.0
    assert 0.2 < ups.mean() < 0.8   # a tie: about half up, half down (nearest-even would never go up)
    assert np.all(np.isposinf(np.asarray(y[1::4], np.float32))) and np.all(np.isneginf(np.asarray(y[2::4], np.float32)))
    assert np.all(np.isnan(np.asarray(y[3::4], np.float32)))


def test_random_bits_depend_on_every_counter():
    shape = (4, 32)
    base = numerics.random_bits(shape, seed=0, step=0, tensor_id=0)
    for other in (dict(seed=1, step=0, tensor_id=0), dict(seed=0, step=1, tensor_id=0),
                  dict(seed=0, step=0, tensor_id=1)):
        changed = np.mean(np.asarray(numerics.random_bits(shape, **other)) != np.asarray(base))
        assert changed > 0.99, other
    assert len(np.unique(np.asarray(base))) == base.size   # no repeats across elements


@pytest.mark.parametrize("specs", [[P(), P("dp"), P("fsdp", "tp")], [P(None, "tp"), P(("dp", "fsdp")), P("tp", "dp")]])
def test_stochastic_store_is_bitwise_identical_across_layouts(specs):
    # The same fp32 tree, stored (bf16-sr) under three shardings and three layouts: same bits.
    rng = np.random.default_rng(1)
    tree = {"a": rng.normal(size=(16, 24)).astype(np.float32), "b": {"c": rng.normal(size=(8, 16)).astype(np.float32)}}
    policy = PRESETS["bf16-sr"]
    outs = []
    for text, spec in zip(["dp=8", "dp=2,fsdp=2,tp=2", "fsdp=4,tp=2"], specs):
        mesh = program_for(text).mesh
        sh = NamedSharding(mesh, spec)
        store = jax.jit(lambda t: numerics.store(t, policy, seed=5, step=11, prefix="params"),
                        in_shardings=sh, out_shardings=sh)
        outs.append(jax.device_get(store(jax.device_put(tree, sh))))
    for out in outs[1:]:
        for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(out)):
            assert x.dtype == BF16 and np.array_equal(x.view(np.uint16), y.view(np.uint16))


# --- loss scaling ------------------------------------------------------------------------------

def test_loss_scale_backs_off_on_overflow_and_grows_after_an_interval():
    policy = dataclasses.replace(PRESETS["fp16-mixed"], growth_interval=3)
    state = numerics.loss_scale_init(policy)
    grads_inf = {"w": jnp.array([1.0, jnp.inf])}
    assert not bool(numerics.all_finite(grads_inf))
    state = numerics.next_loss_scale(state, numerics.all_finite(grads_inf), policy)
    assert float(state["loss_scale"]) == 2.0 ** 14 and int(state["skipped"]) == 1
    for _ in range(3):
        state = numerics.next_loss_scale(state, jnp.bool_(True), policy)
    assert float(state["loss_scale"]) == 2.0 ** 15 and int(state["good_steps"]) == 0


def test_fp16_step_with_injected_inf_is_skipped_and_training_recovers(corpus):
    run = dataclasses.replace(RUN, precision="fp16-mixed")
    prog = program_for("dp=2,fsdp=2,tp=2", run=run)
    state = prog.init()
    batch = lambda t: jax.device_put(  # noqa: E731
        data_lib.batch(corpus, seed=0, step=t, batch_size=run.batch, seq_len=run.seq), prog.batch_sharding)
    state, _ = prog.step(state, batch(0))
    before = jax.device_get(state)
    # Inject an overflow: a loss scale so large that the fp16 backward overflows.
    state = dataclasses.replace(state, precision=dict(state.precision, loss_scale=jnp.float32(2.0 ** 60)))
    state, m = prog.step(state, batch(1))
    after = jax.device_get(state)
    assert int(m["skipped"]) == 1 and float(m["loss_scale"]) == 2.0 ** 59
    for x, y in zip(jax.tree.leaves((before.params, before.opt_state)), jax.tree.leaves((after.params, after.opt_state))):
        assert np.array_equal(x, y)      # weights and Adam state (its count too) untouched
    assert int(after.step) == 2           # the batch was consumed
    # From an absurd scale the policy halves its way down, then updates again.
    losses = []
    for t in range(2, 80):
        state, m = prog.step(state, batch(t))
        losses.append(float(m["loss"]))
    skipped = int(m["skipped"])
    assert 1 < skipped < 60 and float(m["loss_scale"]) < 2.0 ** 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


# --- fp8 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,unit", [(numerics.E4M3, 2.0 ** -4), (numerics.E5M2, 2.0 ** -3)])
def test_fp8_quantisation_error_is_within_the_format_bound(fmt, unit):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=4096) * np.exp(rng.uniform(-6, 3, size=4096)), jnp.float32)
    scale = numerics.fp8_scale(jnp.zeros(4), fmt, jnp.max(jnp.abs(x)))
    back = np.asarray(numerics.quantize(x, scale, fmt).astype(jnp.float32)) * float(scale)
    # Normal range: relative error ≤ unit roundoff; subnormals: absolute error ≤ half the
    # smallest subnormal, scaled. Nothing may saturate: the scale comes from this tensor's amax.
    tiny = float(ml_dtypes.finfo(fmt).smallest_subnormal) * float(scale) / 2
    err = np.abs(back - np.asarray(x))
    assert np.all(err <= unit * np.abs(np.asarray(x)) + tiny * (1 + 1e-6))
    assert float(np.max(np.abs(back))) == pytest.approx(float(jnp.max(jnp.abs(x))), rel=unit)


def test_fp8_saturates_instead_of_overflowing():
    x = jnp.asarray([1000.0, -1000.0, 1.0], jnp.float32)
    q = numerics.quantize(x, jnp.float32(1.0), numerics.E4M3)
    assert np.array_equal(np.asarray(q.astype(jnp.float32)), [240.0, -240.0, 1.0])


def test_fp8_history_is_updated_through_the_backward_pass():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 5)) * 0.1, jnp.float32)
    meta = jnp.zeros((numerics.FP8_ROWS, 4), jnp.float32)
    g = jnp.asarray(rng.normal(size=(4, 5)) * 1e-3, jnp.float32)
    y, vjp = jax.vjp(lambda x, w, m: numerics.fp8_dot("ij,jk->ik", jnp.float32, x, w, m), x, w, meta)
    dx, dw, new_meta = vjp(g)
    np.testing.assert_allclose(np.asarray(new_meta[:, 0]),
                               [np.abs(x).max(), np.abs(w).max(), np.abs(g).max()], rtol=1e-7)
    assert np.all(np.asarray(new_meta[:, 1:]) == 0)
    # fp8 products: within a few fp8 units of the exact product (e4m3 operands, e5m2 gradients).
    assert np.linalg.norm(y - x @ w) / np.linalg.norm(x @ w) < 2 * 2 ** -4
    assert np.linalg.norm(dw - x.T @ g) / np.linalg.norm(x.T @ g) < 2 * (2 ** -4 + 2 ** -3)


# --- matmul policy -----------------------------------------------------------------------------

def test_bf16_backward_matmuls_get_bf16_operands():
    # The compiled backward of a bf16-mixed matmul must contain no fp32 × fp32 dot: the
    # cotangent is cast to bf16 before both backward matmuls.
    c = numerics.Compute(PRESETS["bf16-mixed"])
    x = jnp.ones((64, 32), jnp.bfloat16)
    w = jnp.ones((32, 16), jnp.float32)
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(c.linear("td,df->tf", x, w).astype(jnp.float32) ** 2), argnums=(0, 1)))
    hlo = f.lower(x, w).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    assert len(dots) == 3   # forward, and the two backward matmuls
    for d in dots:
        operand_types = d.rsplit(":", 1)[1].split("->")[0]
        assert operand_types.count("bf16") == 2, d


# --- every preset trains --------------------------------------------------------------------------

@pytest.mark.parametrize("precision", list(PRESETS))
def test_every_preset_trains_with_falling_loss(precision, corpus):
    from rainier_jax.train.loop import train
    run = dataclasses.replace(RUN, steps=12, precision=precision)
    records = []
    prog = program_for("dp=2,fsdp=2,tp=2", run=run)
    final = train(prog, corpus, on_step=records.append)
    losses = [r.loss for r in records]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses
    assert records[-1].precision == precision
    expect = jnp.bfloat16 if PRESETS[precision].param_dtype == "bfloat16" else jnp.float32
    assert all(x.dtype == expect for x in jax.tree.leaves(final.params))


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-sr", "fp16-mixed", "fp8"])
def test_sharded_preset_matches_the_same_preset_on_one_device(precision, corpus):
    run = dataclasses.replace(RUN, precision=precision)
    policy = PRESETS[precision]
    bound = Bound.for_precisions(policy, policy, n_layers=TINY.n_layers, identical=False)
    result = run_parity(program_for("single", run=run), program_for("dp=2,fsdp=2,tp=2", run=run), corpus,
                        bound=bound, reference_name="single", candidate_name=precision)
    assert result.passed, result.first_violation


def test_bf16_mixed_is_within_its_derived_bound_of_fp32_and_a_scaled_gradient_is_caught(corpus):
    ref = program_for("single")
    run = dataclasses.replace(RUN, precision="bf16-mixed")
    bound = Bound.for_precisions(PRESETS["fp32"], PRESETS["bf16-mixed"], n_layers=TINY.n_layers, identical=False)
    assert bound.kind == "derived-lowp" and bound.eps == 2.0 ** -8
    result = run_parity(ref, program_for("dp=2,fsdp=2,tp=2", run=run), corpus, bound=bound,
                        reference_name="fp32", candidate_name="bf16-mixed")
    assert result.passed, result.first_violation
    # The bound still has teeth: a gradient off by 30 % fails it.
    cand = program_for("dp=2,fsdp=2,tp=2", run=run)
    inner = cand.grads

    def scaled(state, batch):
        loss, g = inner(state, batch)
        return loss, dict(g, head=g["head"] * 1.3)
    result = run_parity(ref, dataclasses.replace(cand, grads=scaled), corpus, bound=bound,
                        reference_name="fp32", candidate_name="bf16-mixed, head grad × 1.3")
    assert not result.passed and result.first_violation.startswith("gradient head ")


# --- the command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["train", "--precision", "bf17"], "--precision bf17: unknown precision"),
    (["train", "--precision", "fp8", "--parallel", "pp=2,dp=4", "--microbatches", "2"], "--precision fp8 with pp=2"),
    (["train", "--precision", "fp8", "--microbatches", "2"], "--precision fp8 with --microbatches 2"),
    (["parity", "--parallel", "dp=8", "--reference-precision", "fp4"], "--reference-precision fp4: unknown"),
    (["parity", "--parallel", "dp=8", "--reference", "pp=2,dp=4", "--microbatches", "2",
      "--reference-precision", "fp8"], "--reference-precision fp8 with pp=2"),
])
def test_cli_rejects_bad_precision_input(args, fragment):
    r = rainier(*args)
    assert r.returncode == 2 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_train_reports_policy_and_bytes_per_param(tmp_path):
    metrics = tmp_path / "m.jsonl"
    r = rainier("train", "--precision", "bf16-sr", "--steps", "2", "--batch", "8", "--seq", "32",
                "--metrics", str(metrics), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "precision bf16-sr:" in r.stdout and "8 bytes/param (weights 2 + grads 2 + optimizer 4)" in r.stdout
    assert "(bf16-sr)" in r.stdout
    assert '"precision": "bf16-sr"' in metrics.read_text()

