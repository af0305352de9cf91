"""What SIGTERM and Ctrl-C do to a training run, noticed by a thread rather than only by Python.

Python runs a signal handler only between two bytecodes of the main thread. A signal that
arrives while the main thread waits inside XLA — compiling, running a step, in a collective
whose peer is gone — is handled when that call returns, which may be much later or never.
`signal.set_wakeup_fd` makes the C-level handler write the signal number to a pipe at once, and
a watcher thread reads it:

* one process with checkpoints, **before its first step** (compiling, restoring, initialising):
  nothing has been computed that is not already on disk, so the process ends at once, exit 0;
* **after that**, the checkpoint session's stop flag is set, and the loop stops at the next step
  boundary, saves that step and exits 0 (the main thread's work: the watcher only notes); a
  second Ctrl-C abandons the run at once, exit 130;
* several processes under `rainier launch`, **after another process failed** (or ended): the
  launcher writes which one to the file named by `FAILURE_ENV` before it sends its SIGTERM. The
  current step cannot finish without that process, so this one ends at once, exit 128 + 15.

Everything else is left to Python's handler in the main thread (`_handle`): with several
processes and no checkpoint session, SIGTERM raises SystemExit(128 + 15) and Ctrl-C
KeyboardInterrupt, as in one process.

Ending at once is `os._exit` after one line on stderr (what was printed is flushed first): no
atexit handler runs. JAX's would shut the distributed runtime down, which waits at a barrier for the lost peer
until the coordination service aborts the process. Checkpoints survive it: a committed
checkpoint is a renamed directory, and a save still in flight stays an uncommitted temporary,
which `--resume` ignores and the next run removes. The one thing never cut in half is a file the
main thread is writing (the compile cache, the metrics file): the watcher waits for it first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

# Set by `rainier launch` for its processes: the file it writes, before it ends the others,
# naming the process that failed. Empty (or absent) while every process is fine.
FAILURE_ENV = "RAINIER_LAUNCH_FAILURE"
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long an exit at once waits for the main thread to finish writing a file.
WRITE_WAIT_S = 5.0
# Under `rainier launch`, how long a process whose collective failed waits for the launcher's
# SIGTERM (the launcher looks at its processes every 0.1 s).
LAUNCHER_WAIT_S = 3.0
# Frames (file suffix, qualified name) in which the main thread writes a file that a cut would
# leave truncated: jax's persistent compile cache never rewrites an entry it finds, and a
# metrics line cut in half would be read back by --resume.
_WRITERS = ((os.path.join("jax", "_src", "compiler.py"), "_cache_write"),
            (os.path.join("rainier_jax", "train", "metrics.py"), "MetricsLog.write"))

_current: Stopping | None = None


def launcher_failure() -> str | None:
    """What `rainier launch` wrote about a failed process, or None (no launcher, no failure)."""
    path = os.environ.get(FAILURE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None


class StopFlag(threading.Event):
    """The checkpoint session's "stop after this step" flag. The train loop asks `is_set()` at
    every step boundary (cli/train.py passes it, through cluster.agreed, as `should_stop`), so the
    first question marks the end of the run's preparation: from then on a step may be running
    whose result is not on disk yet."""

    def __init__(self):
        super().__init__()
        self._asked = False
        self.lock = threading.Lock()   # held while the watcher decides on "before the first step"

    def is_set(self) -> bool:
        with self.lock:
            self._asked = True
        return super().is_set()

    @property
    def asked(self) -> bool:
        """Whether the loop has reached its first step boundary."""
        return self._asked

    def noted(self) -> bool:
        """`is_set` for everyone but the loop: does not count as a step boundary."""
        return super().is_set()


class Stopping:
    """The process's SIGTERM/SIGINT handling: a Python handler (so that neither signal takes its
    default action) and the watcher thread. One per process; `install` returns it."""

    def __init__(self, num_processes: int):
        self.num_processes = num_processes
        self.session = None          # the CheckpointSession attached, if any
        self._handled = 0            # signals seen by the Python handler
        self._ending = threading.Lock()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)   # the C handler must never block
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        self._thread = threading.Thread(target=self._watch, name="rainier-signals", daemon=True)
        self._thread.start()

    # -- the watcher thread --------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:   # `uninstall` closed the pipe
                return
            for signum in data:
                if signum in SIGNALS:
                    try:
                        self._noticed(signal.Signals(signum))
                    except Exception:  # noqa: BLE001 — the watcher must outlive a failed print
                        pass

    def _noticed(self, sig: signal.Signals) -> None:
        if self.num_processes > 1 and (failure := launcher_failure()):
            self.end_now(f"rainier: {sig.name} from rainier launch: {failure}; ending without saving "
                         "(the current step cannot finish without that process)", 128 + sig)
        session = self.session
        if session is None:
            return   # the Python handler acts (several processes, no checkpoints)
        if sig == signal.SIGINT and session.stop.noted():
            if self.num_processes == 1:
                self.end_now("rainier: interrupted (second Ctrl-C): run abandoned", 130)
            return   # several processes: KeyboardInterrupt in each, from the Python handler
        if self.num_processes == 1:
            with session.stop.lock:
                if not session.stop.asked:
                    self.end_now(f"rainier: {sig.name} before the first step: {session.nothing_to_save()}; "
                                 "exiting", 0)
        session.note_signal(sig)

    def end_now(self, line: str, code: int) -> None:
        """One line on stderr, then `os._exit(code)`; waits first (at most WRITE_WAIT_S) for a file
        write the main thread is in the middle of. Never returns."""
        with self._ending:   # a second signal during the exit must not start another
            deadline = time.monotonic() + WRITE_WAIT_S
            while _main_thread_writing() and time.monotonic() < deadline:
                time.sleep(0.01)
            # What the run printed goes out first, but a flush can block (a full pipe whose reader
            # stopped): it gets a helper thread and a second, the line a direct write.
            flusher = threading.Thread(target=_flush, daemon=True)
            flusher.start()
            flusher.join(1.0)
            try:
                os.write(2, (line + "\n").encode())
            except OSError:   # stderr closed: nothing to tell
                pass
            os._exit(code)

    # -- the main thread -----------------------------------------------------------------

    def _handle(self, signum, frame) -> None:
        self._handled += 1
        if self.num_processes > 1 and launcher_failure():
            return   # the watcher ends the process (after any file write this handler interrupted)
        if self.session is not None:
            # The watcher noted the signal. Ctrl-C after an earlier signal abandons the run: with
            # several processes as KeyboardInterrupt in each (one process has ended by now, from
            # the watcher).
            if signum == signal.SIGINT and self._handled > 1:
                raise KeyboardInterrupt
            return
        # Several processes without a checkpoint session: end as one process would.
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def uninstall(self) -> None:
        """Put the previous handlers and wakeup fd back and stop the watcher."""
        global _current
        for s, h in self._previous.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)
        self._thread.join(timeout=5)
        os.close(self._read)
        if _current is self:
            _current = None


def install(num_processes: int) -> tuple[Stopping, bool]:
    """The process's Stopping, created on first use (from the main thread). Returns it and whether
    this call created it (the creator uninstalls it)."""
    global _current
    if _current is None:
        _current = Stopping(num_processes)
        return _current, True
    return _current, False


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):   # closed, broken, or gone at shutdown
            pass


def _main_thread_writing() -> bool:
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        code = frame.f_code
        if any(code.co_filename.endswith(path) and code.co_qualname == name for path, name in _WRITERS):
            return True
        frame = frame.f_back
    return False


def excepthook_for_processes(previous):
    """sys.excepthook for a process of several: an error from the JAX runtime (typically a
    collective that failed because a peer is gone: "Gloo all-reduce failed: … Connection reset by
    peer") is one line, not a traceback, and the process ends with `os._exit` — the distributed
    shutdown at exit would wait for the lost peer until JAX aborts the process. Under `rainier
    launch` it first gives the launcher LAUNCHER_WAIT_S: the launcher knows which process failed
    first, and its SIGTERM then ends this one as a survivor (module docstring), so that the
    summary blames the right process."""
    def hook(kind, value, tb):
        from jax.errors import JaxRuntimeError
        if not issubclass(kind, JaxRuntimeError):
            previous(kind, value, tb)
            return
        if os.environ.get(FAILURE_ENV):
            time.sleep(LAUNCHER_WAIT_S)   # the watcher ends the process if the launcher's SIGTERM comes
        first = str(value).strip().splitlines()[0] if str(value).strip() else kind.__name__
        line = f"rainier: the JAX runtime failed: {first}"
        if _current is not None:
            _current.end_now(line, 1)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        os._exit(1)
    return hook
