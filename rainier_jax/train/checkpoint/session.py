"""The `train` command's side of checkpointing: what to save and where (`SavePlan`), and a
session that restores, saves with the run record, and turns SIGTERM or Ctrl-C into "finish this
step, save it, exit 0" (a second Ctrl-C abandons the run at once; before the first step there is
nothing to save and one process ends at once — dist/stopping.py).
"""

from __future__ import annotations

import dataclasses
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rainier_jax.train.checkpoint import record as records
from rainier_jax.dist import stopping
from rainier_jax.train.checkpoint.store import Checkpointer, restore
from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.train.checkpoint.record import step_record


@dataclasses.dataclass
class SavePlan:
    directory: Path
    every: int                     # save every K steps (0: only at the end and when stopped)
    keep: int
    found: records.Found | None     # the checkpoint to resume from
    notes: list[str]               # lines about settings the resumed run changes
    record: dict                   # record.run_record of this run
    primary: bool = True           # process 0 of several (or the only one): moves damaged checkpoints aside
    warn: Callable[[str], None] | None = None   # the Checkpointer's warnings, settings marked (store.py)


class CheckpointSession:
    """One run's checkpointing, from the restore to the last save; installs the signal handlers
    for its lifetime (`close` puts the previous ones back)."""

    def __init__(self, plan: SavePlan):
        self.directory, self.every, self.found, self.record = plan.directory, plan.every, plan.found, plan.record
        self.stop = stopping.StopFlag()
        self.signal_name = None
        if self.found is not None and plan.primary:
            # Every process chose the checkpoint from the same files before JAX started (and
            # JAX's start is a barrier), so only process 0 touches the directory.
            for path, why in self.found.rejected:
                aside = records.set_aside(path)
                print(f"checkpoint {path}: {why}; moved aside to {aside.name}", file=sys.stderr)
            for note in plan.notes:
                print(note)
        self.checkpointer = Checkpointer(self.directory, keep=plan.keep, warn=plan.warn)
        # SIGTERM and Ctrl-C reach `note_signal` from dist/stopping.py's watcher thread, at once even
        # while the main thread waits inside XLA; a signal before the first step ends one process
        # there and then (`nothing_to_save`).
        import jax
        self._stopping, self._owns_stopping = stopping.install(jax.process_count())
        self._stopping.session = self

    def note_signal(self, sig: signal.Signals) -> None:
        """The first SIGTERM or Ctrl-C: stop after the current step and save it (watcher thread)."""
        if self.stop.noted():
            return
        self.signal_name = sig.name
        self.stop.set()
        print(f"rainier: {self.signal_name}: stopping after the current step to save it "
              "(Ctrl-C again to abandon)", file=sys.stderr, flush=True)

    def nothing_to_save(self) -> str:
        """Why a signal before the first step loses nothing."""
        if self.found is None:
            return "nothing to save yet"
        return f"nothing new to save ({self.found.path} stays the newest checkpoint)"

    def restore(self, program):
        if self.found is None:
            return None
        t0 = time.perf_counter()
        try:
            state = restore(self.found.path, program.abstract_state)
        except Exception as e:  # noqa: BLE001 — the manifest matched, so this is not damage we can route around
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"{setting('resume')}: {self.found.path} passed its manifest check but orbax cannot "
                              f"restore it ({type(e).__name__}: {first}); move it aside to resume from an older one") from None
        saved = self.found.record.experiment
        print(f"resumed from {self.found.path} (step {self.found.step}, saved as {saved.layout_text} "
              f"on {saved.mesh}) in {time.perf_counter() - t0:.1f} s", flush=True)
        return state

    def save(self, step, state):
        self.checkpointer.save(step, state, step_record(self.record, step))

    def close(self):
        # Signals keep their meaning while the last save commits: a SIGTERM then is noted, a
        # second Ctrl-C abandons the save (it stays an uncommitted temporary).
        try:
            self.checkpointer.close()
        finally:
            self._stopping.session = None
            if self._owns_stopping:
                self._stopping.uninstall()

    def describe(self, step: int) -> str:
        c = self.checkpointer
        if not c.saved:
            line = (f"checkpoints: none saved by this run; newest is step {step} in {self.directory}" if step
                    else "checkpoints: none saved (no step completed)")
        else:
            line = (f"checkpoints: saved step{'s' * (len(c.saved) > 1)} {', '.join(map(str, c.saved))} in "
                    f"{self.directory} (async; the loop waited a median {statistics.median(c.blocked_seconds) * 1e3:.0f} ms "
                    "per save)")
        if self.signal_name:
            line += (f"\nrainier: stopped by {self.signal_name} after step {step}; "
                     + (f"saved {self.directory / str(step)}" if c.saved and c.saved[-1] == step
                        else f"newest checkpoint {self.directory / str(step)}" if step else "nothing to save"))
        return line
