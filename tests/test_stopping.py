"""How fast SIGTERM ends `rainier train --checkpoint-dir …` (dist/stopping.py), in subprocesses.

The promise is "finish the current step, save it, exit 0", bounded by one step plus its save:
before the first step there is nothing to save and the run ends at once, even in the middle of
an XLA compile; after it, the run stops after the step in flight (not one more) and saves it.
The multi-process side (a survivor of a killed process) is in test_launch.py.
"""

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cli_runner import ROOT, cli_env, start, wait_for
from rainier_jax.train.checkpoint import manifest
from rainier_jax.train.checkpoint import record
from rainier_jax.dist import stopping

TRAIN = ("train", "--steps", "60", "--batch", "16", "--seq", "64", "--eval-every", "0")
TOKENS = 16 * 64
# Generous on purpose: two cores shared with other test runs. The precise claims are the step
# counts and the messages; these bounds only catch a run that keeps going.
AT_ONCE_S = 10.0
SAVE_SLACK_S = 20.0


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (Linux: the caught-signals mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def records(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def sigterm_and_wait(proc, then=lambda: None):
    """Send SIGTERM, call `then` at once, wait for the exit: (stdout, stderr, seconds, then())."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    right_after = then()
    out, err = proc.communicate(timeout=120)
    return out, err, time.monotonic() - sent, right_after


def test_sigterm_during_compilation_ends_at_once(tmp_path):
    """Nothing is computed before the first step that is not on disk already: the run ends on
    the spot, exit 0, one line — not after the compile and the state's initialisation."""
    ckpt = tmp_path / "ckpt"
    proc = start(*TRAIN, "--checkpoint-dir", str(ckpt), cache=False)
    try:
        # The checkpoint session's handler is in place just before the compile starts; 2 s later
        # the step is being compiled (about 10 s here).
        wait_for(lambda: catches_sigterm(proc.pid), proc)
        time.sleep(2)
        out, err, took, _ = sigterm_and_wait(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert took < AT_ONCE_S, f"took {took:.1f} s"
    assert err == "rainier: SIGTERM before the first step: nothing to save yet; exiting\n", err
    assert "compiled in" not in out, "the signal came after the compile: the test did not test it"
    assert record.steps_on_disk(ckpt) == []


def test_sigterm_mid_run_stops_after_the_step_in_flight(tmp_path):
    """SIGTERM while step N+1 runs: the run saves step N+1 and exits 0 — the loop dispatches no
    step after the signal — within one step plus its save (and slack)."""
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    proc = start(*TRAIN, "--checkpoint-dir", str(ckpt), "--metrics", str(metrics))
    try:
        wait_for(lambda: len(records(metrics)) >= 3, proc)
        time.sleep(0.1)   # into the next step (about 0.7 s each here)
        before = len(records(metrics))
        out, err, took, after = sigterm_and_wait(proc, then=lambda: len(records(metrics)))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    stopped = re.search(r"stopped by SIGTERM after step (\d+); saved (\S+)", out)
    assert stopped, out
    step = int(stopped.group(1))
    # Logged steps when the signal came, and at most one running (a line written around the
    # signal leaves only the weaker bound).
    assert before <= step <= (before if before == after else after) + 1, (before, after, step)
    assert record.steps_on_disk(ckpt) == [step] and manifest.verify(ckpt / str(step)) is None
    longest = max(TOKENS / r["tokens_per_s"] for r in records(metrics)[1:])
    assert took < longest + SAVE_SLACK_S, f"took {took:.1f} s; the longest step took {longest:.1f} s"
    assert err.count("stopping after the current step") == 1 and "Traceback" not in err


FAILED_COLLECTIVE = textwrap.dedent("""
    import sys
    from jax.errors import JaxRuntimeError
    from rainier_jax.dist import stopping
    stopping.install(2)   # as cluster.start does for a process of two
    sys.excepthook = stopping.excepthook_for_processes(sys.excepthook)
    print("ready", flush=True)
    raise JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: Read error: Connection reset by peer")
""")


def test_a_failed_collective_under_the_launcher_ends_on_its_sigterm(tmp_path):
    """A survivor whose collective fails (the dead peer's connection was reset) before the
    launcher's SIGTERM comes waits for it, then ends as a survivor: one line, 128 + 15. The
    launcher, not the survivor, knows which process failed first."""
    note = tmp_path / "failure"
    note.write_text("")
    env = cli_env(["python"], {stopping.FAILURE_ENV: str(note)})
    proc = subprocess.Popen([sys.executable, "-c", FAILED_COLLECTIVE], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        note.write_text("process 1 was killed by SIGKILL")   # what dist/launcher.py writes, then it sends SIGTERM
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err == ("rainier: SIGTERM from rainier launch: process 1 was killed by SIGKILL; ending without "
                   "saving (the current step cannot finish without that process)\n"), err


def test_a_failed_collective_without_a_signal_is_one_line(tmp_path):
    """No SIGTERM follows (this process's own failure): one line, exit 1, no traceback."""
    note = tmp_path / "failure"
    note.write_text("")
    env = cli_env(["python"], {stopping.FAILURE_ENV: str(note)})
    r = subprocess.run([sys.executable, "-c", FAILED_COLLECTIVE], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr == ("rainier: the JAX runtime failed: UNKNOWN: Gloo all-reduce failed: Read error: "
                        "Connection reset by peer\n"), r.stderr


def test_an_exit_at_once_waits_for_a_file_write():
    """`end_now` does not cut a file in half: it finds the writers among the main thread's frames
    by name — the real MetricsLog.write (seen here while it writes) and jax's compile-cache write
    (whose name is checked)."""
    import threading
    from types import SimpleNamespace

    from jax._src import compiler

    from rainier_jax.train.metrics import MetricsLog

    code = compiler._cache_write.__code__
    assert any(code.co_filename.endswith(path) and code.co_qualname == name for path, name in stopping._WRITERS)

    inside, release, seen = threading.Event(), threading.Event(), []

    class SlowFile:
        def write(self, text):
            inside.set()
            release.wait(10)

        def flush(self):
            pass

    def watch():
        inside.wait(10)
        seen.append(stopping._main_thread_writing())
        release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    log = SimpleNamespace(_f=SlowFile(), written=0)
    MetricsLog.write(log, SimpleNamespace(as_json=lambda: {"step": 1}))
    watcher.join(10)
    assert seen == [True] and not stopping._main_thread_writing()
