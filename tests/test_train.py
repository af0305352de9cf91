"""The model and the training step: causality, sharded state, learning, golden losses.

Layout-versus-one-device numerics are checked by the parity harness (tests/test_parity.py).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from programs import TINY, program_for
from rainier_jax.train import data
from rainier_jax.spec.run import RunConfig
from rainier_jax.train.loop import lr_schedule, train
from rainier_jax.model.llama import decode, embed, init_params, no_constraint


def test_state_is_sharded_as_declared():
    program = program_for("dp=2,fsdp=2,tp=2")
    state = program.init()
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(program.state_shardings)):
        assert got.sharding.is_equivalent_to(want, got.ndim)
    # Adam's moments take the parameter shardings (sharded optimizer state under FSDP).
    mu = state.opt_state[1][0].mu["layers"]["wq"]
    assert mu.addressable_shards[0].data.shape == (8, 64, 4, 16)


def test_causality_by_gradient():
    """Logits at position t have exactly zero gradient w.r.t. input embeddings after t."""
    cfg = dataclasses.replace(TINY, n_layers=2)
    params = init_params(cfg, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
    x = embed(params, tokens, no_constraint)
    t = 6

    def logits_at_t(x):
        return jnp.sum(decode(params, x, cfg)[:, t, :] ** 2)

    g = jax.jit(jax.grad(logits_at_t))(x)
    assert np.all(np.asarray(g[:, t + 1:]) == 0.0)
    assert np.all(np.abs(np.asarray(g[:, : t + 1])).sum(axis=-1) > 0)


def test_lr_schedule_warms_up_and_decays():
    run = RunConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lr = lr_schedule(run)
    assert float(lr(0)) == pytest.approx(1e-4)
    assert float(lr(9)) == pytest.approx(1e-3)
    assert float(lr(99)) == pytest.approx(1e-4)
    assert float(lr(50)) < float(lr(20))


def test_loss_falls_on_default_corpus():
    corpus = data.load_corpus(None, TINY.vocab_size, 64)
    run = RunConfig(steps=40, batch=16, seq=64, eval_every=20, lr=3e-3)
    records = []
    train(program_for("dp=2,fsdp=2,tp=2", run=run), corpus, on_step=records.append)
    assert records[0].loss > 5.0                      # ≈ ln 256 = 5.55 at random init
    assert np.mean([r.loss for r in records[-5:]]) < 3.2
    evals = [r.eval_loss for r in records if r.eval_loss is not None]
    assert len(evals) == 2 and evals[1] < evals[0] < 4.0


def test_zero1_trains_the_same_model(tmp_path):
    """ZeRO-1 only moves where Adam's elementwise update runs: the losses and parameters of a few
    steps are bit for bit those of the unsplit optimizer (the elementwise update is the same
    arithmetic on each element, and the gradient sums come out in the same order)."""
    from programs import RUN

    corpus = data.load_corpus(None, 256, RUN.seq)
    out = {}
    for zero1 in (False, True):
        records = []
        program = program_for("dp=4,tp=2", run=dataclasses.replace(RUN, zero1=zero1))
        final = train(program, corpus, on_step=records.append)
        out[zero1] = ([r.loss for r in records], jax.tree.map(np.asarray, jax.device_get(final.params)), program)
    assert out[True][0] == out[False][0]
    for a, b in zip(jax.tree.leaves(out[False][1]), jax.tree.leaves(out[True][1])):
        assert np.array_equal(a, b)
    # and the moments really are split over dp
    mu = out[True][2].state_shardings.opt_state[1][0].mu["layers"]["w_up"]
    assert "dp" in str(mu.spec)
