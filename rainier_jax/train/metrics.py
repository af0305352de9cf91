"""What a run shows and keeps: the progress display, the JSONL metrics file, the summary.

Kept apart from the loop so the loop stays about training; `train.loop.train` calls `on_step` with one
`StepRecord` per completed update.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from rainier_jax.config.errors import ConfigError, setting


@dataclasses.dataclass
class StepRecord:
    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens_per_s: float
    eval_loss: float | None = None
    precision: str = "fp32"
    loss_scale: float | None = None     # fp16-mixed: the scale after this step
    skipped: int | None = None          # fp16-mixed: overflowed (skipped) steps so far

    def as_json(self) -> dict:
        """The JSON object of this step: fields that do not apply are left out; a NaN or infinite
        value is written as null (bare NaN is not JSON)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items() if v is not None}


class MetricsLog:
    """Appends one JSON object per optimizer step; never writes a step the file already holds.

    The file is checked when the run starts (before anything compiles), so an unwritable path or a
    clash with existing steps is a clean error rather than a crash after minutes of training.
    A resumed run (`resuming`) first drops the records after its checkpoint: those steps were lost
    with the process that ran them and run again, so the file ends up describing one run.
    """

    def __init__(self, path: str, first_step: int, resuming: bool = False, check_only: bool = False):
        """`check_only`: raise what opening would raise, change nothing (`rainier launch` checks
        a command before starting its processes)."""
        self.path = Path(path)
        self.dropped = 0
        self.written = 0
        last = self._last_step()
        if resuming and last is not None and last >= first_step:
            if check_only:
                last = None   # the run itself will drop them
            else:
                self._drop_from(first_step)
                last = self._last_step()
        if last is not None and last >= first_step:
            raise ConfigError(f"{setting('metrics')} {path}: the file already holds steps up to {last} and this run "
                              f"would write step {first_step} again; pass a new path or move the file away")
        if check_only:
            if not os.access(self.path if self.path.exists() else self.path.parent, os.W_OK):
                raise ConfigError(f"{setting('metrics')} {path}: cannot write there; give a path in a writable directory")
            return
        try:
            self._f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{setting('metrics')} {path}: cannot write there ({e.strerror}); "
                              "give a path in a writable directory") from None

    def _last_step(self) -> int | None:
        if self.path.is_dir():
            raise ConfigError(f"{setting('metrics')} {self.path}: is a directory; give a file path such as "
                              f"{self.path / 'metrics.jsonl'}")
        if not self.path.is_file():
            return None
        last = None
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    last = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{setting('metrics')} {self.path}: line {n} is not a metrics record "
                                      "(not written by rainier?); pass a new path") from None
        return last

    def _drop_from(self, step: int) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = [ln for ln in lines if not ln.strip() or json.loads(ln)["step"] < step]
        self.dropped = sum(1 for ln in lines if ln.strip()) - sum(1 for ln in keep if ln.strip())
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text("".join(keep), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            raise ConfigError(f"{setting('metrics')} {self.path}: cannot rewrite it to drop the steps after the checkpoint "
                              f"({e.strerror}); give a writable path") from None

    def write(self, rec: StepRecord) -> None:
        """Append one record. An OSError (a full disk, a device that refuses writes) is raised to
        the caller, which stops the run: the records after it would be lost anyway."""
        self._f.write(json.dumps(rec.as_json(), allow_nan=False) + "\n")
        self._f.flush()  # a crash keeps every step already reported
        self.written += 1

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the flush failed; write() has already reported it
            pass


BAR_ENV = "RAINIER_PROGRESS_BAR"


class Progress:
    """A tqdm bar on a terminal; a log line every ~10 % of the run otherwise (CI logs, pipes)."""

    def __init__(self, total: int, first_step: int, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.total, self.first = total, first_step
        self.records: list[StepRecord] = []
        self.bar = None
        self.quiet = quiet   # keep the records, show nothing (processes other than 0)
        # `rainier launch` relays process 0's output through a pipe and asks for the bar when
        # its own terminal would show it.
        terminal = self.stream.isatty() or os.environ.get(BAR_ENV) == "1"
        if terminal and not quiet and not os.environ.get("CI"):
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=0, file=self.stream, unit="step", dynamic_ncols=True,
                            desc="train")
        self.every = max(1, total // 10)
        self.started = time.perf_counter()

    def update(self, rec: StepRecord) -> None:
        self.records.append(rec)
        if self.quiet:
            return
        done = rec.step - self.first
        if self.bar is not None:
            post = {"loss": f"{rec.loss:.4f}", "tok/s": f"{rec.tokens_per_s:,.0f}"}
            if rec.eval_loss is not None:
                post["eval"] = f"{rec.eval_loss:.4f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
            if rec.eval_loss is not None:
                self.bar.write(f"step {rec.step}: eval loss {rec.eval_loss:.4f}")
        elif done % self.every == 0 or done == self.total or rec.eval_loss is not None:
            eta = (time.perf_counter() - self.started) / done * (self.total - done)
            line = (f"step {rec.step:>6}  loss {rec.loss:.4f}  grad_norm {rec.grad_norm:.3f}  "
                    f"lr {rec.lr:.2e}  {rec.tokens_per_s:,.0f} tok/s  eta {eta:.0f} s")
            if rec.eval_loss is not None:
                line += f"  eval_loss {rec.eval_loss:.4f}"
            if rec.loss_scale is not None:
                line += f"  loss_scale {rec.loss_scale:g}  skipped {rec.skipped}"
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(records: list[StepRecord], *, compile_seconds: float, wall_seconds: float) -> str:
    if not records:
        return "no steps run"
    tps = [r.tokens_per_s for r in records[1:]] or [records[0].tokens_per_s]
    evals = [r for r in records if r.eval_loss is not None]
    last = records[-1]
    lines = [
        f"steps {records[0].step}–{last.step} ({last.precision}): loss {records[0].loss:.4f} → {last.loss:.4f}"
        + (f", eval loss {evals[-1].eval_loss:.4f}" if evals else "")
        + (f"; loss scale {last.loss_scale:g}, {last.skipped} steps skipped on overflow"
           if last.loss_scale is not None else ""),
        f"throughput: median {statistics.median(tps):,.0f} tokens/s (first step excluded); "
        f"compile {compile_seconds:.1f} s; total {wall_seconds:.1f} s",
    ]
    return "\n".join(lines)
