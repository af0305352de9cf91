"""Run the `rainier` command in a subprocess, as a user would (the CLI sizes its own mesh) — or,
with `faults`, through tests/fault_entry.py, which installs a fault-injection hook first."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


CACHE = Path(os.environ.get("RAINIER_TEST_CACHE", ROOT / ".cache" / "jax"))
FAULT_ENTRY = ROOT / "tests" / "fault_entry.py"


def command(args, faults=()) -> list[str]:
    """The command line of `rainier ARGS`; with `faults` (fault_entry.py's options, e.g.
    ("--seal-delay", "4:3")) the same command with those hooks installed."""
    if faults:
        return [sys.executable, str(FAULT_ENTRY), *faults, *args]
    return [sys.executable, "-m", "rainier_jax.cli", *args]


def cli_env(args, extra: dict | None = None) -> dict:
    """The environment a test runs `rainier ARGS` in: this checkout on the path, and the test
    session's persistent compile cache (conftest.py) through JAX's environment variables, so a CLI
    run of a program an earlier test compiled loads it. Not for `launch`: its processes would
    write the same cache entries at once, and JAX's cache writes are not atomic."""
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if tuple(args[:1]) != ("launch",):
        env.update(JAX_COMPILATION_CACHE_DIR=str(CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def rainier(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(args), cwd=ROOT, env=cli_env(args), capture_output=True, text=True,
                          timeout=timeout)


def start(*args: str, cache: bool = True, faults=()) -> subprocess.Popen:
    """`rainier ARGS` in the background (for signals sent mid-run); `cache=False` leaves the
    compile cache out, so the compile lasts long enough to be interrupted in; `faults` as for
    `command`."""
    env = cli_env(args)
    if not cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
    return subprocess.Popen(command(args, faults), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll `predicate` until it holds; fail if `proc` exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
