"""`rainier` with a fault injected, for tests that run the CLI in a subprocess: installs the hooks
its own leading options ask for, then runs the command line that follows as `rainier` would.

    python tests/fault_entry.py [--seal-delay STEP:SECONDS] [--seal-fail STEP] RAINIER-ARGS…

--seal-delay  holds the save of checkpoint STEP in flight for SECONDS: its items are written, its
              temporary directory is on disk, nothing is committed (a crash or a signal lands there).
--seal-fail   fails the save of checkpoint STEP where its manifest is written, with ENOSPC (a full
              disk, for a machine that will not mount a small tmpfs).

Both go through `rainier_jax.train.checkpoint.store.before_seal`, the library's documented test
hook; library code reads no environment variable for them. Test-only: never installed by rainier.
"""

from __future__ import annotations

import errno
import sys
import time
from pathlib import Path

FAULTS = ("--seal-delay", "--seal-fail")


def _seal_hook(delays: dict[int, float], failures: set[int]):
    def before_seal(step: int) -> None:
        if step in delays:
            time.sleep(delays[step])
        if step in failures:
            raise OSError(errno.ENOSPC, "No space left on device")
    return before_seal


def _parse(argv: list[str]) -> tuple[dict[int, float], set[int], list[str]]:
    delays, failures = {}, set()
    while argv and argv[0] in FAULTS:
        if len(argv) < 2:
            raise SystemExit(f"fault_entry: {argv[0]} needs a value")
        option, value, argv = argv[0], argv[1], argv[2:]
        try:
            if option == "--seal-delay":
                step, sep, seconds = value.partition(":")
                if not sep:
                    raise ValueError(value)
                delays[int(step)] = float(seconds)
            else:
                failures.add(int(value))
        except ValueError:
            raise SystemExit(f"fault_entry: {option} {value!r}: expected "
                             + ("STEP:SECONDS" if option == "--seal-delay" else "STEP")) from None
    return delays, failures, argv


def main() -> None:
    delays, failures, rest = _parse(sys.argv[1:])
    if not (delays or failures):
        raise SystemExit(f"fault_entry: no fault given ({', '.join(FAULTS)}); run `python -m rainier_jax.cli` instead")
    from rainier_jax.train.checkpoint import store
    store.before_seal = _seal_hook(delays, failures)
    # `rainier` reads its arguments from sys.argv (its parser's typo hints too).
    sys.argv = [str(Path(__file__)), *rest]
    from rainier_jax.cli.main import entry
    entry()


if __name__ == "__main__":
    main()
