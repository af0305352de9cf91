"""N local processes on one multi-controller JAX runtime, each owning mesh-instances/N emulated
instances (rainier_jax/dist/cluster.py): starting them, relaying their output, ending them all when
one fails. `rainier launch` (rainier_jax/cli/launch.py) runs a `rainier` command this way and
`rainier run --processes N` (rainier_jax/cli/run.py) a user's script; each checks its input, then
calls `run` with the command line of the processes. This module knows nothing of flags or parsers.

`run` starts each process from the same command line with `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, and relays their output with a `[pK] ` prefix on every
line (gloo's one-line "connected to N peer ranks" notices are dropped).

The launcher itself runs JAX's coordination service. In process 0 — where JAX puts it — its death
would make JAX abort every other process at once (SIGABRT and a C++ stack trace).

When a process fails — exits non-zero or is killed — the launcher names it, writes that to the
file `stopping.FAILURE_ENV` names for every process, sends the others SIGTERM and, `GRACE_S`
later, SIGKILL. (A process that ends on a signal passed on to it is no failure, but the others
are ended the same way: they may be waiting for it in a collective.) A survivor is typically
blocked in a collective with the dead peer, where neither the step nor Python's signal handler
can finish; dist/stopping.py's watcher reads the note and ends it at once with one line and exit
128 + 15, long before JAX's heartbeat timeout would abort it. The launcher exits with the first
failing process's code (128 + the signal number for a killed process) and says how each other
process ended. SIGINT/SIGTERM sent to the launcher are passed on to every process, so Ctrl-C
saves a checkpoint exactly as it does for one process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from rainier_jax.config.errors import ConfigError, setting

GRACE_S = 10.0
# gloo's C++ threads print these notices concurrently, so pieces of two can share a line.
_GLOO_NOTICE = re.compile(rb"^\[Gloo\] Rank|connected peer ranks is")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(port: int) -> None:
    """The coordinator port `port` is valid and free on 127.0.0.1 (the setting `port`)."""
    if not 0 < port < 65536:
        raise ConfigError(f"{setting('port')} {port}: must be 1 … 65535 (or leave it out to pick a free one)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"{setting('port')} {port}: already in use on 127.0.0.1; choose another, or leave "
                              f"{setting('port')} out to pick a free one") from None


class _Relay(threading.Thread):
    """Copies one child stream to ours, `[pK] ` at the start of every line (after \\n or \\r, so a
    progress bar's redraws keep their prefix)."""

    def __init__(self, k: int, source, sink, lock: threading.Lock):
        super().__init__(daemon=True)
        self.prefix = f"[p{k}] ".encode()
        self.source, self.sink, self.lock = source, sink, lock

    def run(self) -> None:
        pending = b""
        fd = self.source.fileno()
        while chunk := os.read(fd, 65536):
            pending += chunk
            out = []
            while (cut := min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0), default=-1)) >= 0:
                line, pending = pending[:cut + 1], pending[cut + 1:]
                if not _GLOO_NOTICE.search(line):
                    out.append(self.prefix + line)
            if out:
                self._write(b"".join(out))
        if pending and not _GLOO_NOTICE.search(pending):
            self._write(self.prefix + pending + b"\n")

    def _write(self, data: bytes) -> None:
        with self.lock:
            self.sink.write(data)
            self.sink.flush()


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, ask for SIGKILL when the launcher dies (a killed
    launcher must not leave processes training on their own). Elsewhere nothing is done."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _ended_on(code: int | None, signum: int | None) -> bool:
    """Whether an exit code is a process ending on `signum`: killed by it, or exiting with
    128 + it (dist/stopping.py's exit, SystemExit)."""
    return signum is not None and code in (-signum, 128 + signum)


def _start_service(port: int, processes: int):
    """JAX's coordination service, in the launcher (module docstring). A private jaxlib entry
    point: the public `jax.distributed.initialize` starts it only inside process 0."""
    from jax._src.lib import _jax

    from rainier_jax.dist.cluster import HEARTBEAT_S, SHUTDOWN_S
    return _jax.get_distributed_runtime_service(f"[::]:{port}", processes, heartbeat_timeout=HEARTBEAT_S,
                                                shutdown_timeout=SHUTDOWN_S)


def run(processes: int, argv: list[str], port: int, *, env: Mapping[str, str] | None = None,
        first_env: Mapping[str, str] | None = None, name: str = "rainier launch", shown: str | None = None) -> int:
    """Run the command line `argv` (e.g. `[sys.executable, "-m", "rainier_jax.cli", "train", …]`)
    as `processes` processes joined through 127.0.0.1:`port`: start them, relay their output, end
    them all if one fails; returns the launch's exit code. `env`: extra environment variables
    for every process; `first_env`: for process 0 only (the one that draws progress). The
    launcher's own lines start with `name` ("rainier launch: …") and show the command as `shown`
    (default: `argv`).
    A coordination service that cannot start is a ConfigError naming the setting `port`."""
    import tempfile

    from rainier_jax.dist.cluster import SERVICE_ENV
    from rainier_jax.dist.stopping import FAILURE_ENV

    fd, note = tempfile.mkstemp(prefix="rainier-launch-", suffix=".failure")
    os.close(fd)
    env = {**os.environ, **(env or {}), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": str(processes), "PYTHONUNBUFFERED": "1", FAILURE_ENV: note, SERVICE_ENV: "1"}
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):   # the launcher decides the process count here
        env.pop(var, None)
    try:
        return _run(processes, list(argv), port, env, note, dict(first_env or {}), name,
                    " ".join(argv) if shown is None else shown)
    finally:
        for path in (note, note + ".tmp"):
            try:
                os.unlink(path)
            except OSError:
                pass


def _run(processes: int, argv: list[str], port: int, env: dict, note: str, first_env: dict, name: str,
         shown: str) -> int:
    children: list[subprocess.Popen] = []
    lock = threading.Lock()
    relays = []
    for k in range(processes):
        child_env = dict(env, JAX_PROCESS_ID=str(k), **(first_env if k == 0 else {}))
        children.append(subprocess.Popen(argv, env=child_env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                         preexec_fn=_die_with_parent))
    # The service and the relays start once every process is started (a preexec_fn must not run
    # while threads do); the processes keep trying to reach the service for cluster.INIT_S.
    try:
        service = _start_service(port, processes) if processes > 1 else None   # one process never joins it
    except Exception as e:  # noqa: BLE001 — the port was free a moment ago: one line, no traceback
        for p in children:
            p.kill()
        for p in children:
            p.wait()
            p.stdout.close()
            p.stderr.close()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot start JAX's coordination service on 127.0.0.1:{port} ({first}); "
                          f"try again, or give another {setting('port')}") from None
    for k, p in enumerate(children):
        for source, sink in ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer)):
            relay = _Relay(k, source, sink, lock)
            relay.start()
            relays.append(relay)
    say = lambda text: _say(text, lock)  # noqa: E731
    say(f"{name}: {processes} processes on 127.0.0.1:{port} "
        f"(pids {', '.join(str(p.pid) for p in children)}): {shown}")

    forwarded = None   # the signal passed on to every process, if any

    def forward(signum, frame):
        nonlocal forwarded
        forwarded = signum
        for p in children:
            if p.poll() is None:
                p.send_signal(signum)

    def describe(j: int, code: int) -> str:
        if _ended_on(code, forwarded):
            return f"ended on the {signal.Signals(forwarded).name} passed on to it"
        if j in killed and code == -signal.SIGKILL:
            return f"was killed by the launcher's SIGKILL ({GRACE_S:g} s after its SIGTERM)"
        if j in terminated and _ended_on(code, signal.SIGTERM):
            return "ended on the launcher's SIGTERM"
        return _describe(code)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    first_failure = None
    ending_since = None   # when the others were sent SIGTERM, after the first process ended non-zero
    terminated, killed = set(), set()   # the processes the launcher sent SIGTERM, SIGKILL
    try:
        while any(p.poll() is None for p in children):
            for k, p in enumerate(children):
                code = p.poll()
                if ending_since is not None or code in (None, 0):
                    continue
                # A process that ends on a signal passed on to it did as asked: not a failure. Either
                # way the others cannot go on without it (they may wait for it in a collective).
                if not _ended_on(code, forwarded):
                    first_failure = (k, code)
                    say(f"{name}: process {k} (pid {p.pid}) {_describe(code)}; ending the other processes")
                # Before the SIGTERM: dist/stopping.py reads it in each process, to end at once.
                with open(note + ".tmp", "w", encoding="utf-8") as f:
                    f.write(f"process {k} {describe(k, code)}")
                os.replace(note + ".tmp", note)
                for j, q in enumerate(children):
                    if q.poll() is None:
                        terminated.add(j)
                        q.send_signal(signal.SIGTERM)
                ending_since = time.monotonic()
            if ending_since is not None and not killed and time.monotonic() > ending_since + GRACE_S:
                for j, q in enumerate(children):
                    if q.poll() is None:
                        killed.add(j)
                        q.kill()
            time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if service is not None:
            service.shutdown()
    for relay in relays:
        relay.join(timeout=5)
    codes = [p.returncode for p in children]
    if first_failure is None:
        # The last process to end is not looked at inside the loop.
        asked = lambda j, c: _ended_on(c, forwarded) or (j in terminated and _ended_on(c, signal.SIGTERM))  # noqa: E731
        failed = [(j, c) for j, c in enumerate(codes) if c != 0 and not asked(j, c)]
        if not failed:
            ended = [(j, c) for j, c in enumerate(codes) if c != 0]
            if not ended:
                return 0
            # Every process ended as it was asked (e.g. SIGTERM to a run without checkpoints).
            say(f"{name}: " + "; ".join(f"process {j} {describe(j, c)}" for j, c in ended))
            code = ended[0][1]
            return 128 - code if code < 0 else code
        first_failure = failed[0]
    k, code = first_failure
    others = ", ".join(f"process {j} {describe(j, c)}" for j, c in enumerate(codes) if j != k)
    say(f"{name}: process {k} failed first ({_describe(code)})" + (f"; {others}" if others else ""))
    return 128 - code if code < 0 else code


def _say(text: str, lock: threading.Lock) -> None:
    with lock:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
