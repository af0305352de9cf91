"""Asynchronous orbax checkpoints of the train state, sealed with a content manifest.

A checkpoint is a plain orbax `CheckpointManager` step directory with two items:
`state` (an orbax PyTree save — what `ocp.StandardCheckpointer` restores: params, opt_state, step,
precision — global arrays, layout-free) and `meta` (JsonSave: the run record of
`train/checkpoint/record.py`). Saving is asynchronous: `save` returns once the arrays are copied
off the devices, and orbax writes them in a background thread while training goes on. Before orbax
renames the temporary directory into place, its post-finalization callback (still in the
background thread) hashes every file into `MANIFEST.sha256`, so the manifest is part of the atomic
commit: a committed checkpoint always carries the hashes of what was written.

Rainier, not orbax, decides what in the directory is a step and what may be deleted: orbax lists
only rainier's own step folders (`_RainierSteps`), its `max_to_keep` is off, and the `keep`
setting deletes only checkpoints `record.is_own` recognises (docs/CHECKPOINTS.md, "What
rainier-jax writes and deletes").

Restoring takes the target program's shardings (`Program.abstract_state`): orbax reads each
array straight into the new layout, so a checkpoint written under one mesh or layout continues
under another (docs/CHECKPOINTS.md).

Importing this module changes nothing outside it: orbax's logging is quieted by the front end
that wants it quiet (`quiet_orbax_logging`), and the array handler a Checkpointer saves with is
its own (`_type_handlers`), not a registration in orbax's global registry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from rainier_jax.config.errors import ConfigError, setting, spell
from rainier_jax.train.checkpoint import manifest
from rainier_jax.train.checkpoint import record as records
from rainier_jax.train.checkpoint.record import STATE_ITEM
from rainier_jax.train.state import TrainState

# orbax's marker of an uncommitted save: `<step>.orbax-checkpoint-tmp…` until the rename commits it.
TMP_SUFFIX = ocp.path.step.TMP_DIR_SUFFIX

# Test hook, None in normal use: called with the step in orbax's background thread once that
# save's items are written and before its manifest is sealed and the directory renamed (asynchronous
# saves only). A test installs it — in its own process, or in a subprocess through
# tests/fault_entry.py — to hold a save in flight (sleep) or to fail it there (raise, e.g. an OSError
# with ENOSPC: the error then surfaces exactly as a failed manifest write would).
before_seal: Callable[[int], None] | None = None


def quiet_orbax_logging() -> None:
    """Silence orbax's absl logging for the rest of the process. orbax logs every save and restore
    at INFO/WARNING, and a failed background write at ERROR before raising it to the caller; a
    front end that reports checkpoints itself (the `rainier` CLI: one summary line, one line for a
    failed save) calls this once. Process-wide, so never done on import."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)


def _warn_stderr(text: str) -> None:
    print(f"rainier: {spell(text)}", file=sys.stderr)


def _as_dict(state: TrainState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}


class _RainierSteps(ocp.path.step.NameFormat):
    """orbax's standard step names, but only rainier's folders count as steps. orbax lists the
    steps at start-up and would otherwise take any folder named like one for a checkpoint: skip
    every save up to its number (its "latest step"), and delete it to keep `max_to_keep`."""

    def __init__(self):
        self._standard = ocp.path.step.standard_name_format()

    def build_name(self, step: int) -> str:
        return self._standard.build_name(step)

    def find_all(self, base_path):
        return (m for m in self._standard.find_all(base_path) if records.foreign(Path(m.path)) is None)

    def find_step(self, base_path, step: int):
        found = self._standard.find_step(base_path, step)
        if records.foreign(Path(found.path)) is not None:
            raise ValueError(f"{found.path} is not a rainier-jax checkpoint")
        return found


def _type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
    """orbax's standard type handlers, with this process's own handler for jax.Array. The registry
    is the Checkpointer's alone (handed to its PyTree handler): orbax's global one, which
    `restore` and every other orbax user in the process read, stays as orbax made it.

    Replica-parallel saving splits each replicated array among its replicas so that several hosts
    share the writing. In one process it only adds an on-device slice per replica and array —
    compiled on the first save (2.3 s for the tiny model on 8 ranks) and dispatched on every save
    — for writes the same process does anyway."""
    array = ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1)
    return ocp.type_handlers.create_type_handler_registry(
        *((ty, array if ty is jax.Array else ocp.type_handlers.get_type_handler(ty))
          for ty in ocp.type_handlers.supported_types()))


class Checkpointer:
    """One run's checkpoint directory. `async_save=False` is the synchronous baseline for the
    benchmark: orbax writes inside `save`, and the manifest is written after the commit.

    Errors of a background save (a full disk: OSError or orbax's RuntimeError) are raised by the
    next `save` or by `close`, as orbax raises them; `discard_uncommitted` then gives the space of
    the failed save back.

    `warn` receives the one warning a Checkpointer gives (a checkpoint `keep` could not delete:
    the run goes on), its settings marked (rainier_jax/config/errors.py) for the front end to
    spell; by default it goes to stderr with the settings' bare names."""

    def __init__(self, directory: Path, *, keep: int, async_save: bool = True,
                 warn: Callable[[str], None] | None = None):
        self.directory = Path(directory)
        self.keep = keep
        self.async_save = async_save
        self._warn = warn or _warn_stderr
        # Of several processes, only the first deletes (`keep`, discard_uncommitted), as orbax's
        # own directory operations do: the others would race it for the same folders.
        self._primary = jax.process_index() == 0
        self._sealing: int | None = None
        self.blocked_seconds: list[float] = []   # per save: how long the loop waited
        self.seal_seconds: list[float] = []      # per save: manifest hashing (background if async)
        self.saved: list[int] = []               # steps whose save was started (orbax accepted it)
        self._started: list[int] = []            # steps handed to orbax (its temporary may exist)
        options = ocp.CheckpointManagerOptions(
            # `keep` is rainier's own (`_prune`): orbax's would delete whatever it lists as a step.
            max_to_keep=None, enable_async_checkpointing=async_save,
            step_name_format=_RainierSteps(),
            # A save cut off by a crash leaves `<step>.orbax-checkpoint-tmp`; it was never
            # committed, so it holds nothing to keep.
            cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal) if async_save else None)
        handlers = {STATE_ITEM: ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers()),
                    "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def _pending_dir(self, step: int) -> Path:
        found = sorted(self.directory.glob(f"{step}{TMP_SUFFIX}*"))
        if len(found) != 1:  # orbax changed its commit protocol: fail the save loudly
            raise RuntimeError(f"checkpoint {step}: expected one orbax temporary directory, found {found}")
        return found[0]

    def _seal(self) -> None:
        """orbax's post-finalization callback: runs after the items are written, before the rename."""
        step = self._sealing
        if before_seal is not None:
            before_seal(step)
        t0 = time.perf_counter()
        manifest.write(self._pending_dir(step))
        self.seal_seconds.append(time.perf_counter() - t0)

    def _prune(self) -> None:
        """`keep`: delete all but the newest `keep` of rainier's own committed checkpoints. Only
        called once every save started so far has committed, so the newest are always complete.
        A folder `record.is_own` does not recognise is never touched, whatever its name."""
        if not self._primary:
            return
        try:
            own = sorted(int(n) for n in os.listdir(self.directory)
                         if records.is_step_name(n) and records.is_own(self.directory / n))
        except OSError:
            return   # nothing listed, nothing deleted; the next save or close tries again
        for step in own[:-self.keep]:
            path = self.directory / str(step)
            # Renamed first into orbax's temporary namespace, so a crash halfway through the
            # deletion leaves no half checkpoint under a step name (orbax removes it on start).
            doomed = path.with_name(f"{step}{TMP_SUFFIX}.deleting")
            try:
                os.replace(path, doomed)
                shutil.rmtree(doomed)
            except OSError as e:   # a checkpoint too many costs disk, not the run
                self._warn(f"{setting('keep')} {self.keep}: could not delete {path} ({e.strerror}); "
                           "left in place")

    def save(self, step: int, state: TrainState, record: dict) -> None:
        """Start saving `state` (completed step `step`); returns when the loop may continue."""
        jax.block_until_ready(state)   # the step itself is not charged to the save
        t0 = time.perf_counter()
        # orbax waits for the previous save before starting this one; waiting here first keeps
        # `_sealing` from changing under the previous save's callback — and raises its error.
        self._manager.wait_until_finished()
        self._prune()
        target = self.directory / str(step)
        if os.path.lexists(target):
            # orbax would delete it to make room (it saves with force=True). Nothing rainier wrote
            # can be there: newer checkpoints were moved aside before the run started.
            raise ConfigError(f"{setting('checkpoint_dir')} {self.directory}: {target} appeared during the run; "
                              f"rainier-jax does not overwrite it — move it out of {self.directory}, then "
                              f"{setting('resume')}")
        self._sealing = step
        self._started.append(step)   # before orbax creates the temporary directory: discard_uncommitted finds it
        started = self._manager.save(step, args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.PyTreeSave(_as_dict(state)), "meta": ocp.args.JsonSave(record)}))
        if not started:   # orbax skips a step at or below one it lists; none should be listed
            raise RuntimeError(f"checkpoint {step}: orbax declined to save it (steps it lists: "
                               f"{self._manager.all_steps()})")
        if not self.async_save:
            self._manager.wait_until_finished()
            t1 = time.perf_counter()
            manifest.write(target)
            self.seal_seconds.append(time.perf_counter() - t1)
            self.blocked_seconds.append(t1 - t0)   # orbax's own save; the hashing is reported apart
            self._prune()
        else:
            self.blocked_seconds.append(time.perf_counter() - t0)
        self.saved.append(step)

    def discard_uncommitted(self) -> list[Path]:
        """Remove the temporary directory of every save this Checkpointer started that never
        committed (after a failed save, e.g. on a full disk, to give its space back). Committed
        checkpoints are never touched: orbax's rename moved them out of the temporary names.
        Waits for a save still in flight first (its error, if not raised yet, is raised after the
        removal). Returns the directories removed (none on processes other than the first)."""
        removed = []
        try:
            self._manager.wait_until_finished()
        finally:
            for step in dict.fromkeys(self._started) if self._primary else ():
                for tmp in self.directory.glob(f"{step}{TMP_SUFFIX}*"):
                    if tmp.is_dir() and not tmp.is_symlink():
                        shutil.rmtree(tmp, ignore_errors=True)
                        removed.append(tmp)
        return removed

    def close(self) -> None:
        """Wait until every save started so far is committed, apply `keep`, release the manager.
        A failed save raises here (the manager is released all the same)."""
        try:
            self._manager.wait_until_finished()
            self._prune()
        finally:
            self._manager.close()


def restore(step_dir: Path, abstract_state: TrainState) -> TrainState:
    """Read the `state` item of one checkpoint into the shardings of `abstract_state` (a tree of
    `jax.ShapeDtypeStruct` with shardings, from the program that will continue the run)."""
    target = _as_dict(abstract_state)
    restored = ocp.StandardCheckpointer().restore(Path(step_dir).resolve() / STATE_ITEM, target)
    return TrainState(**restored)
