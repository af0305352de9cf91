"""Checkpoints through the library: bitwise resume, restore onto other layouts, the manifest.

A run of 2N steps that saves at N is the reference; restoring step N from disk and running N more
must reproduce it — bit for bit on the same layout (CPU fp32 and the bf16 emulation are
deterministic), within the parity harness's free-running bound on another layout.
"""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from programs import MINI8, RUN, TINY, program_for
from rainier_jax.train.checkpoint import store
from rainier_jax.train import data as data_lib
from rainier_jax.train.checkpoint import manifest
from rainier_jax.train.checkpoint import record as resume
from rainier_jax.parallel.experiment import resolve
from rainier_jax.parity.harness import FREE_LOSS_RTOL
from rainier_jax.train.loop import train

N = 2  # steps before and after the save


@functools.lru_cache(maxsize=None)
def corpus():
    return data_lib.load_corpus(None, TINY.vocab_size, RUN.seq)


def run_for(precision="fp32", microbatches=1, schedule="1f1b", virtual_stages=1):
    return dataclasses.replace(RUN, steps=2 * N, precision=precision, microbatches=microbatches,
                               schedule=schedule, virtual_stages=virtual_stages)


@functools.lru_cache(maxsize=None)
def program(layout: str, **run):
    return program_for(layout, run=run_for(**run))


RECORD = resume.run_record(resolve(MINI8, TINY, "dp=8", RUN), mesh=MINI8.name, data_arg=None,
                           corpus_source="test", corpus_sha256="0")


def train_saving(prog, directory):
    """2N steps from a fresh state, saving (asynchronously) at step N and at the end."""
    saver = store.Checkpointer(directory, keep=3)
    records = []
    final = train(prog, corpus(), on_step=records.append,
                  save=lambda step, state: saver.save(step, state, resume.step_record(RECORD, step)), save_every=N)
    saver.close()
    assert saver.saved == [N, 2 * N]
    return records, final


def resume_from(prog, step_dir):
    records = []
    final = train(prog, corpus(), on_step=records.append, state=store.restore(step_dir, prog.abstract_state))
    return records, final


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(host(a)), jax.tree.leaves(host(b))):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), jax.tree_util.keystr(path)


@pytest.mark.parametrize("layout,run", [
    ("dp=2,fsdp=2,tp=2", {"precision": "fp32"}),
    ("dp=2,fsdp=2,tp=2", {"precision": "bf16-mixed"}),
    ("dp=2,tp=2,pp=2", {"precision": "fp32", "microbatches": 2}),
    ("dp=2,tp=2,pp=2", {"precision": "bf16-mixed", "microbatches": 2}),
    # The policies with state of their own: loss scale and skip count; fp8 amax histories.
    ("dp=2,fsdp=2,tp=2", {"precision": "fp16-mixed"}),
    ("dp=4,tp=2", {"precision": "fp8"}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_resume_is_bitwise(tmp_path, layout, run):
    prog = program(layout, **run)
    records, final = train_saving(prog, tmp_path)
    resumed, final2 = resume_from(prog, tmp_path / str(N))
    assert [r.step for r in resumed] == list(range(N + 1, 2 * N + 1))
    assert [r.loss for r in resumed] == [r.loss for r in records[N:]]
    assert [r.grad_norm for r in resumed] == [r.grad_norm for r in records[N:]]
    assert_trees_equal(final, final2)   # params, Adam state, step, precision state
    if run["precision"] in ("fp16-mixed", "fp8"):
        assert final.precision, "the policy's own state is part of the checkpoint"


# Saved on one layout, continued on another: (saved, resumed), each with its pipeline settings.
PAIRS = [
    (("dp=8", {}), ("single", {})),
    (("dp=8", {}), ("dp=2,tp=2,pp=2", {"microbatches": 2})),
    (("dp=2,tp=2,pp=2", {"microbatches": 2}), ("dp=2,fsdp=2,tp=2", {})),
    (("fsdp=4,tp=2", {}), ("dp=2,pp=4", {"microbatches": 4, "schedule": "interleaved", "virtual_stages": 2})),
]


@pytest.mark.parametrize("saved,resumed", PAIRS, ids=lambda p: p[0] + "".join(f",{k}={v}" for k, v in p[1].items()))
def test_restore_onto_another_layout(tmp_path, saved, resumed):
    src, dst = program(saved[0], **saved[1]), program(resumed[0], **resumed[1])
    records, final = train_saving(src, tmp_path)
    state = store.restore(tmp_path / str(N), dst.abstract_state)
    # Resharding on restore is exact: every array equals what was saved, now in dst's shardings.
    saved_state = store.restore(tmp_path / str(N), src.abstract_state)
    assert_trees_equal(saved_state, state)
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(dst.state_shardings)):
        assert leaf.sharding == sharding
    # Continuing there gives the same losses within the parity harness's free-running bound.
    resumed_records = []
    final2 = train(dst, corpus(), on_step=resumed_records.append, state=state)
    np.testing.assert_allclose([r.loss for r in resumed_records], [r.loss for r in records[N:]],
                               rtol=FREE_LOSS_RTOL, atol=0)
    # and parameters within the free-running limit: Adam moves a parameter by at most ~lr per step
    drift = 2 * sum(r.lr for r in records[N:])
    for a, b in zip(jax.tree.leaves(host(final.params)), jax.tree.leaves(host(final2.params))):
        assert np.max(np.abs(a - b)) <= drift


def test_manifest_detects_damage(tmp_path):
    root = tmp_path / "7"
    (root / "state" / "d").mkdir(parents=True)
    (root / "state" / "d" / "a").write_bytes(b"x" * 1000)
    (root / "meta").mkdir()
    (root / "meta" / "metadata").write_text("{}")
    (root / "_CHECKPOINT_METADATA").write_text("{}")    # orbax rewrites it on commit: not covered
    manifest.write(root)
    assert manifest.verify(root) is None
    listed = (root / manifest.MANIFEST).read_text()
    assert "state/d/a" in listed and "meta/metadata" in listed and "_CHECKPOINT_METADATA" not in listed
    (root / "_CHECKPOINT_METADATA").write_text("{changed}")
    assert manifest.verify(root) is None
    with open(root / "state" / "d" / "a", "r+b") as f:   # truncated
        f.truncate(500)
    assert "state/d/a does not match" in manifest.verify(root)
    (root / "state" / "d" / "a").write_bytes(b"x" * 999 + b"y")   # same size, one byte flipped
    assert "state/d/a does not match" in manifest.verify(root)
    (root / "state" / "d" / "a").unlink()
    assert manifest.verify(root) == "state/d/a is missing"
    (root / manifest.MANIFEST).write_text("garbage\n")
    assert "malformed" in manifest.verify(root)
    (root / manifest.MANIFEST).unlink()
    assert "no MANIFEST.sha256" in manifest.verify(root)


def test_checkpoint_is_sealed_and_complete(tmp_path):
    """A committed checkpoint carries its manifest, the run record and the whole state."""
    prog = program("dp=2,fsdp=2,tp=2", precision="fp32")
    train_saving(prog, tmp_path)
    assert resume.steps_on_disk(tmp_path) == [N, 2 * N]
    found = resume.newest_intact(tmp_path)
    assert found.step == 2 * N and not found.rejected
    assert found.record.step == 2 * N and found.record.data_position == {"next_batch": 2 * N}
    assert found.record.rng["seed"] == RUN.seed and found.record.rng["counter"] == 2 * N
    saved = json.loads((found.path / "meta" / "metadata").read_text())
    assert set(saved) >= {"experiment", "data", "checkpoint", "saved_at"}
    assert set(saved["experiment"]) >= {"model", "run", "mesh", "lnc", "layout"}
    state = store.restore(found.path, prog.abstract_state)
    assert int(state.step) == 2 * N
