"""Importing the library changes nothing outside it: no process-global state at import time. The
process is configured by whoever runs it — the CLI entry, `rj.emulate()`, tests/conftest.py.

A fresh interpreter imports the outside packages the library imports at module level (their own
import-time effects are theirs), takes a snapshot of the process's state, imports every library
module (everything under rainier_jax/ but cli/), and compares: logging levels and handlers,
warnings filters, signal handlers and the wakeup fd, the exception and display hooks, the
environment, the working directory and sys.path, threads, atexit callbacks, jax.config, numpy's
error and print settings, and orbax's global type handlers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import ast, atexit, importlib, json, logging, os, pathlib, signal, sys, threading, warnings

root = pathlib.Path(sys.argv[1])
modules, outside = [], set()
for path in sorted((root / "rainier_jax").rglob("*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[1:2] == ("cli",):
        continue
    modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for node in ast.parse(path.read_text(encoding="utf-8")).body:   # module level: what runs on import
        if isinstance(node, ast.Import):
            outside |= {a.name for a in node.names if not a.name.startswith("rainier_jax")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not node.module.startswith("rainier_jax"):
            outside.add(node.module)
outside.discard("__future__")
for name in sorted(outside | {"jax", "numpy", "orbax.checkpoint"}):
    importlib.import_module(name)


def snapshot():
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    loggers = {"": logging.getLogger()} | {n: l for n, l in logging.Logger.manager.loggerDict.items()
                                          if isinstance(l, logging.Logger)}
    loggers = {n: [l.level, [id(h) for h in l.handlers], l.propagate, l.disabled] for n, l in loggers.items()}
    # A logger created on import with nothing set is no change; one created with a level or handler is.
    loggers = {n: v for n, v in loggers.items() if n == "" or v != [logging.NOTSET, [], True, False]}
    signals = {}
    for s in signal.valid_signals():
        try:
            signals[int(s)] = repr(signal.getsignal(s))
        except (ValueError, OSError):
            pass
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return {
        "logging": loggers, "logging.disable": logging.root.manager.disable,
        "warnings.filters": [repr(f) for f in warnings.filters],
        "signal handlers": signals, "signal wakeup fd": fd,
        "hooks": [repr(h) for h in (sys.excepthook, sys.unraisablehook, sys.displayhook, threading.excepthook)],
        "os.environ": dict(os.environ), "cwd": os.getcwd(), "sys.path": list(sys.path),
        "threads": sorted(t.name for t in threading.enumerate()), "atexit callbacks": atexit._ncallbacks(),
        "jax.config": {k: repr(getattr(jax.config, k)) for k in dir(jax.config) if k.startswith("jax_")},
        "numpy": [repr(np.geterr()), repr(np.get_printoptions())],
        "orbax type handlers": [id(ocp.type_handlers.get_type_handler(t)) for t in ocp.type_handlers.supported_types()],
        "recursion limit": sys.getrecursionlimit(),
    }


before = snapshot()
for name in modules:
    importlib.import_module(name)
after = snapshot()
print(json.dumps({"modules": modules, "changed": {k: [before[k], after[k]] for k in before if before[k] != after[k]}}))
"""


def test_importing_the_library_changes_no_process_state():
    r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert "rainier_jax.train.checkpoint.store" in report["modules"] and len(report["modules"]) > 40
    changed = {}
    for kind, (before, after) in report["changed"].items():
        if isinstance(before, dict):
            changed[kind] = {k: [before.get(k), after.get(k)] for k in {*before, *after} if before.get(k) != after.get(k)}
        else:
            changed[kind] = [before, after]
    assert not changed, f"importing the library changed process state (before, after): {changed}"
