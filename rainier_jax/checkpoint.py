"""Asynchronous orbax checkpoints of the train state, sealed with a content manifest.

A checkpoint is a plain orbax `CheckpointManager` step directory with two items:
`state` (StandardSave: params, opt_state, step, precision — global arrays, layout-free) and `meta`
(JsonSave: the run record of `resume.py`). Saving is asynchronous: `save` returns once the arrays
are copied off the devices, and orbax writes them in a background thread while training goes on.
Before orbax renames the temporary directory into place, its post-finalization callback (still in
the background thread) hashes every file into `MANIFEST.sha256`, so the manifest is part of the
atomic commit: a committed checkpoint always carries the hashes of what was written.

Restoring takes the target program's shardings (`Program.abstract_state`): orbax reads each
array straight into the new layout, so a checkpoint written under one mesh or layout continues
under another (docs/CHECKPOINTS.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from rainier_jax import manifest
from rainier_jax.resume import STATE_ITEM
from rainier_jax.train import TrainState

# Fault injection for the crash and signal tests: "STEP:SECONDS" holds the save of that step in
# flight (its temporary directory on disk, not committed) for that long. Never set in normal use.
SEAL_DELAY_ENV = "RAINIER_TEST_SEAL_DELAY"


def _seal_delay(step: int) -> float:
    at, _, seconds = os.environ.get(SEAL_DELAY_ENV, "").partition(":")
    return float(seconds) if at.strip() == str(step) else 0.0

# orbax logs every save and restore at INFO/WARNING through absl; a training run shows its own
# one-line summary instead.
logging.getLogger("absl").setLevel(logging.ERROR)


def _as_dict(state: TrainState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}


class Checkpointer:
    """One run's checkpoint directory. `async_save=False` is the synchronous baseline for the
    benchmark: orbax writes inside `save`, and the manifest is written after the commit."""

    def __init__(self, directory: Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory)
        self.async_save = async_save
        self._sealing: int | None = None
        self.blocked_seconds: list[float] = []   # per save: how long the loop waited
        self.seal_seconds: list[float] = []      # per save: manifest hashing (background if async)
        self.saved: list[int] = []
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save,
            # A save cut off by a crash leaves `<step>.orbax-checkpoint-tmp`; it was never
            # committed, so it holds nothing to keep.
            cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal) if async_save else None)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        # Replica-parallel saving splits each replicated array among its replicas so that several
        # hosts share the writing. In one process it only adds an on-device slice per replica and
        # array — compiled on the first save (2.3 s for the tiny model on 8 ranks) and dispatched
        # on every save — for writes the same process does anyway.
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1),
            override=True)

    def _pending_dir(self, step: int) -> Path:
        found = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        if len(found) != 1:  # orbax changed its commit protocol: fail the save loudly
            raise RuntimeError(f"checkpoint {step}: expected one orbax temporary directory, found {found}")
        return found[0]

    def _seal(self) -> None:
        """orbax's post-finalization callback: runs after the items are written, before the rename."""
        step = self._sealing
        time.sleep(_seal_delay(step))
        t0 = time.perf_counter()
        manifest.write(self._pending_dir(step))
        self.seal_seconds.append(time.perf_counter() - t0)

    def save(self, step: int, state: TrainState, record: dict) -> None:
        """Start saving `state` (completed step `step`); returns when the loop may continue."""
        jax.block_until_ready(state)   # the step itself is not charged to the save
        t0 = time.perf_counter()
        # orbax waits for the previous save before starting this one; waiting here first keeps
        # `_sealing` from changing under the previous save's callback.
        self._manager.wait_until_finished()
        self._sealing = step
        self._manager.save(step, args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave(_as_dict(state)), "meta": ocp.args.JsonSave(record)}))
        if not self.async_save:
            self._manager.wait_until_finished()
            t1 = time.perf_counter()
            manifest.write(self.directory / str(step))
            self.seal_seconds.append(time.perf_counter() - t1)
            self.blocked_seconds.append(t1 - t0)   # orbax's own save; the hashing is reported apart
        else:
            self.blocked_seconds.append(time.perf_counter() - t0)
        self.saved.append(step)

    def close(self) -> None:
        """Wait until every save started so far is committed, then release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def restore(step_dir: Path, abstract_state: TrainState) -> TrainState:
    """Read the `state` item of one checkpoint into the shardings of `abstract_state` (a tree of
    `jax.ShapeDtypeStruct` with shardings, from the program that will continue the run)."""
    target = _as_dict(abstract_state)
    restored = ocp.StandardCheckpointer().restore(Path(step_dir).resolve() / STATE_ITEM, target)
    return TrainState(**restored)
