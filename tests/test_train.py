"""The model and the training step: causality, sharded state, learning, golden losses.

Layout-versus-one-device numerics are checked by the parity harness (tests/test_parity.py).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from programs import TINY, program_for
from rainier_jax import data
from rainier_jax.run_config import RunConfig
from rainier_jax.train import lr_schedule, train
from rainier_jax.transformer import decode, embed, init_params, no_constraint


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
