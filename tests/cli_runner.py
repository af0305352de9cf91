"""Run the `rainier` command in a subprocess, as a user would (the CLI sizes its own mesh)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rainier(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "rainier_jax.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
