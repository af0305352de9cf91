"""The pipeline executor: every schedule matches the unpipelined model; bubbles never leak."""

import dataclasses

import jax
import numpy as np
import pytest

from cli_runner import rainier
from programs import MINI8, RUN, TINY, program_for
from rainier_jax.train import data
from rainier_jax.parallel import sharding
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.parallel.placement import layout_warnings, place
from rainier_jax.parity.harness import Bound, run_parity
from rainier_jax.model.networks import network
from rainier_jax.model.seam import Context
from rainier_jax.parallel.pipeline import pipeline_loss_and_grads, plan
from rainier_jax.parallel.schedules import build_schedule, pack
from rainier_jax.parallel.experiment import resolve
from rainier_jax.train.loop import build_program

EPS32 = float(np.finfo(np.float32).eps)
PIPE_RUN = dataclasses.replace(RUN, steps=2)

# Each schedule at P=2 with M=2P (a steady state between warm-up and drain) and at P=4 with M=P
# (the fewest microbatches, the largest bubble); pp=2 composes with dp and tp, pp=4 with dp. The
# schedule tables themselves are checked for every (P, M, V) in test_schedules.py.
CASES = [(kind, P, 2 * P if P == 2 else P, V) for kind, V in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2))
         for P in (2, 4)]


def pipelined(kind, P, M, V, run=PIPE_RUN):
    layout = ParallelLayout(pp=2, dp=2, tp=2) if P == 2 else ParallelLayout(pp=4, dp=2)
    run = dataclasses.replace(run, schedule=kind, microbatches=M, virtual_stages=V)
    return build_program(resolve(MINI8, TINY, layout, run))


@pytest.fixture(scope="module")
def corpus():
    return data.synthetic_corpus()


@pytest.fixture(scope="module")
def single():
    return program_for("single", run=PIPE_RUN)


@pytest.mark.parametrize("kind,P,M,V", CASES, ids=[f"{k}-pp{P}-M{M}" for k, P, M, V in CASES])
def test_schedule_matches_unpipelined_model(kind, P, M, V, single, corpus):
    result = run_parity(single, pipelined(kind, P, M, V), corpus, bound=Bound("derived", EPS32),
                        reference_name="single", candidate_name=f"{kind} pp={P} M={M}")
    assert result.passed, result.first_violation
    assert result.free_ok


def test_pipeline_composes_with_fsdp(single, corpus):
    layout = ParallelLayout(pp=4, fsdp=2)
    run = dataclasses.replace(PIPE_RUN, schedule="interleaved", microbatches=8, virtual_stages=2)
    cand = build_program(resolve(MINI8, TINY, layout, run))
    result = run_parity(single, cand, corpus, bound=Bound("derived", EPS32), reference_name="single",
                        candidate_name="pp=4,fsdp=2 interleaved")
    assert result.passed, result.first_violation


def test_gradient_accumulation_with_pp1_matches(single, corpus):
    # dp=4: each replica's 4 sequences split into the 4 microbatches (dp=8 would leave 2 per
    # replica, a batch resolve() refuses).
    run = dataclasses.replace(PIPE_RUN, microbatches=4)
    result = run_parity(single, program_for("dp=4,tp=2", run=run), corpus, bound=Bound("derived", EPS32),
                        reference_name="single", candidate_name="dp=4,tp=2 M=4")
    assert result.passed, result.first_violation


@pytest.mark.parametrize("kind,P,M,V", [("1f1b", 2, 4, 1), ("interleaved", 2, 4, 2), ("gpipe", 4, 4, 1)])
def test_nan_in_bubbles_never_reaches_loss_or_gradients(kind, P, M, V, corpus):
    layout = ParallelLayout(pp=P, dp=8 // P)
    experiment = resolve(MINI8, TINY, layout, dataclasses.replace(PIPE_RUN, schedule=kind, microbatches=M,
                                                                  virtual_stages=V))
    mesh, schedule = experiment.mesh, experiment.schedule
    assert (schedule.fwd[:, :, 0] == -1).any()            # there are bubbles to poison
    constrain = sharding.make_constrain(mesh)
    params = jax.device_put(jax.device_get(program_for("single").init().params),
                            sharding.param_shardings(mesh, layout, TINY))
    batch = jax.device_put(data.batch(corpus, seed=0, step=0, batch_size=16, seq_len=64),
                           sharding.batch_sharding(mesh))

    def run(fill):
        f = jax.jit(lambda p, b: pipeline_loss_and_grads(p, b, network(TINY), schedule, mesh, layout,
                                                         Context(constrain), bubble_fill=fill))
        return jax.device_get(f(params, batch))

    clean, poisoned = run(0.0), run(float("nan"))
    assert np.isfinite(poisoned[0])
    jax.tree.map(lambda a: np.testing.assert_array_equal(np.isfinite(a), True), poisoned[1])
    # Not just finite: bit for bit what the clean run computes.
    jax.tree.map(np.testing.assert_array_equal, poisoned, clean)


@pytest.mark.parametrize("kind,P,M", [("1f1b", 4, 16), ("gpipe", 4, 16), ("1f1b", 2, 8)])
def test_buffers_are_the_schedules_peak(kind, P, M):
    s = build_schedule(kind, P, M)
    assert plan(pack(s)).stash_slots == max(s.peak_in_flight()) == (P if kind == "1f1b" else M)


def _warnings(layout):
    return layout_warnings(layout, MINI8, place(layout, MINI8))


def test_pp_ring_warnings():
    # pp=2 across the mini mesh's two instances: one Z link, fine. pp=4 adds a hop that is no link.
    assert _warnings(ParallelLayout(pp=2, dp=4)) == []
    w = _warnings(ParallelLayout(pp=4, dp=2))
    assert len(w) == 1 and "pp=4" in w[0] and "not rings" in w[0]


def test_parity_command_with_pipeline_flags():
    out = rainier("parity", "--parallel", "pp=2,dp=2,tp=2", "--schedule", "1f1b", "--microbatches", "4",
                  "--steps", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert "verdict: PASS" in out.stdout
