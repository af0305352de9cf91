"""The analytic performance model (rainier_jax/perf/estimate.py) against the compiled program and its
own formulas: the `rainier` recipe's collective bytes equal those of the partitioned HLO of the
real train step, per kind and parallel axes, for dp×fsdp×tp and dp×tp×pp layouts."""

import dataclasses
from collections import Counter

import pytest

from programs import MINI8, RUN, TINY
from rainier_jax.perf import compiled
from rainier_jax.parallel.experiment import resolve
from rainier_jax.perf import flops
from rainier_jax.perf.estimate import estimate, memory
from rainier_jax.perf.estimate_view import discrepancies
from rainier_jax.parallel.layout import ParallelLayout, parse_layout
from rainier_jax.spec.model import load_model
from rainier_jax.spec.run import RunConfig
from rainier_jax.parallel.schedules import build_schedule
from rainier_jax.hardware.topology import load_topology, with_nodes


def _bytes(items) -> Counter:
    """Σ runs × bytes per (kind, axes), scalars left out: the loss and gradient-norm partial sums
    (4 bytes each) are latency, not traffic, and the model does not list them."""
    out = Counter()
    for c in items:
        nbytes = c.nbytes
        if nbytes > 8:
            out[(c.kind, tuple(c.axes))] += c.runs * nbytes
    return out


CASES = [
    # (layout, run settings)
    ("dp=2,fsdp=2,tp=2", dict(precision="fp32", remat="full")),
    ("dp=4,tp=2", dict(precision="fp32", remat="selective", zero1=True)),
    ("dp=2,fsdp=2,tp=2", dict(precision="fp32", remat="full", microbatches=2)),
    ("dp=2,tp=2,pp=2", dict(precision="fp32", remat="full", microbatches=2)),
    ("dp=2,tp=2,pp=2", dict(precision="bf16-mixed", remat="full", microbatches=2, schedule="gpipe", zero1=True)),
]


@pytest.mark.parametrize("layout,settings", CASES, ids=[f"{l}-{'-'.join(map(str, s.values()))}" for l, s in CASES])
def test_rainier_recipe_equals_the_partitioned_hlo(layout, settings):
    """Every byte the compiled step sends, per collective kind and parallel axes, is predicted by
    the `rainier` recipe from model dimensions — exactly, pipelines and gradient accumulation
    included (their executor runs lock-step ticks and reduces gradients every tick)."""
    run = dataclasses.replace(RUN, **settings)
    lay = parse_layout(layout, 8)
    profile = compiled.profile_step(resolve(MINI8, TINY, lay, run))
    analytic = estimate(resolve(MINI8, TINY, lay, run), recipe="rainier")
    assert _bytes(analytic.comms) == _bytes(profile.collectives)
    # Memory may differ (CPU temporaries); traffic may not.
    assert not [line for line in discrepancies(profile, analytic) if "sends" in line]


def test_what_the_model_does_not_cover_is_reported():
    """Interleaved pipelines index their chunks dynamically and GSPMD moves weights to do it: the
    compiled program sends far more than the recipe expects, and the comparison says so."""
    run = dataclasses.replace(RUN, microbatches=4, schedule="interleaved", virtual_stages=2)
    lay = parse_layout("dp=2,tp=2,pp=2", 8)
    found = discrepancies(compiled.profile_step(resolve(MINI8, TINY, lay, run)), estimate(resolve(MINI8, TINY, lay, run),
                                                                                 recipe="rainier"))
    assert any("collective-permute over pp" in line for line in found), found


def test_nxd_sends_less_than_rainiers_program():
    """neuronx-distributed's program (bf16 activations, fused projections, one gradient reduction
    per step) moves fewer bytes over tp and dp than rainier's — the gap `--compiled` reports."""
    run = RunConfig(batch=16, seq=64, precision="bf16-mixed", microbatches=2)
    lay = parse_layout("dp=2,tp=4", 8)
    nxd, own = (_bytes(estimate(resolve(MINI8, TINY, lay, run), recipe=r).comms) for r in ("nxd", "rainier"))
    for axes in (("tp",), ("dp",)):
        assert sum(v for (k, a), v in nxd.items() if a == axes) < sum(v for (k, a), v in own.items() if a == axes)


# ---- the time and memory model's own rules ------------------------------------------------------

LLAMA8 = load_model("llama-3.1-8b")
TRN2 = load_topology("trn2-instance")


def test_step_time_and_mfu_follow_their_definitions():
    run = RunConfig(batch=64, seq=4096, precision="bf16-mixed", microbatches=8, remat="selective")
    lay = ParallelLayout(tp=16, pp=2, dp=2)
    e = estimate(resolve(TRN2, LLAMA8, lay, run))
    assert e.step_time_s == pytest.approx(e.compute_s / (1 - e.bubble) + sum(c.seconds for c in e.comms))
    assert e.bubble == build_schedule("1f1b", 2, 8).bubble()
    peak = TRN2.peak_flops["bf16"] / TRN2.ranks_per_chip
    assert e.mfu == pytest.approx(flops.model_flops(LLAMA8, batch=64, seq=4096) / (e.step_time_s * 64 * peak))
    assert 0 < e.mfu < 1 and e.seq_per_s == pytest.approx(64 / e.step_time_s)
    assert e.tokens_per_s == pytest.approx(e.seq_per_s * 4096)


def test_memory_follows_remat_and_the_schedule():
    base = RunConfig(batch=64, seq=4096, precision="bf16-mixed", microbatches=8)
    lay = ParallelLayout(tp=16, pp=4)
    acts = {r: memory(resolve(TRN2, LLAMA8, lay, dataclasses.replace(base, remat=r))).activations
            for r in ("full", "selective", "none")}
    assert acts["full"] < acts["selective"] < acts["none"]
    # 1F1B holds P microbatches at the first stage, GPipe all M.
    f1b = memory(resolve(TRN2, LLAMA8, lay, base)).activations
    gpipe = memory(resolve(TRN2, LLAMA8, lay, dataclasses.replace(base, schedule="gpipe"))).activations
    assert gpipe == pytest.approx(f1b * 8 / 4)
    # ZeRO-1 splits the optimizer state over dp and nothing else.
    dp = ParallelLayout(tp=16, dp=4)
    plain, z = (memory(resolve(TRN2, LLAMA8, dp, dataclasses.replace(base, microbatches=1, zero1=v))) for v in (False, True))
    assert z.weights == plain.weights and z.grads == plain.grads
    assert z.optimizer == pytest.approx(plain.optimizer / 4, rel=1e-3)


def test_groups_spanning_nodes_are_priced_at_efa():
    """dp across 4 instances joined by EFA: its collectives cross efa, never NeuronLink rates.
    (tp=32 with fsdp=2 fills each instance: the model's 32 heads admit no wider tp.)"""
    topo = with_nodes(TRN2, 4)
    run = RunConfig(batch=64, seq=4096, precision="bf16-mixed")
    e = estimate(resolve(topo, LLAMA8, ParallelLayout(tp=32, fsdp=2, dp=4), run))
    (dp,) = [c for c in e.comms if c.axes == ("dp",)]
    assert dp.priced.link == "efa"
    assert {c.priced.link for c in e.comms if c.axes == ("tp",)} == {"torus"}


def test_gpt2_is_analytic_only():
    gpt2 = dataclasses.replace(TINY, name="gpt2-like", arch="gpt2", n_kv_heads=TINY.n_heads, max_positions=64,
                               tie_embeddings=True)
    e = estimate(resolve(MINI8, gpt2, ParallelLayout(dp=4, tp=2), RunConfig(batch=16, seq=64)))
    assert e.step_time_s > 0 and e.memory.fits
    with pytest.raises(ValueError, match="recipe rainier"):
        estimate(resolve(MINI8, gpt2, ParallelLayout(dp=4, tp=2), RunConfig(batch=16, seq=64)), recipe="rainier")
