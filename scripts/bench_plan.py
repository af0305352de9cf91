"""Benchmark `rainier plan`: the full sweep for llama-3.1-70b on 32 trn2 instances (2,048 ranks),
target < 30 s. Each repetition is a fresh `rainier plan --json` process (cold caches), as a user
runs it; the table gives the sweep time the command reports and the process's wall time.

    PYTHONPATH=. python scripts/bench_plan.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ("llama-3.1-70b", "trn2-instance", 32, 1024, 8192),
    ("llama-3.1-70b", "trn2-ultraserver", 4, 1024, 8192),
    ("llama-3.1-8b", "trn2-instance", 1, 128, 8192),
]


def once(model, mesh, nodes, batch, seq):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rainier_jax.cli", "plan", "--model", model, "--mesh", mesh,
                           "--nodes", str(nodes), "--batch", str(batch), "--seq", str(seq), "--json", "--top", "1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    out = json.loads(proc.stdout)
    return out["seconds"], wall, out["considered"], out["fitting"], out["top"][0]["settings"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d')}")
    print(f"| model | mesh × nodes (ranks) | batch × seq | candidates (fit) | sweep s, median of {args.repeats} "
          "| process wall s | target | #1 |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for case in CASES:
        runs = [once(*case) for _ in range(args.repeats)]
        sweep = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        model, mesh, nodes, batch, seq = case
        ranks = {"trn2-instance": 64, "trn2-ultraserver": 256}[mesh] * nodes
        verdict = ("PASS" if wall < 30 else "FAIL") if (model, nodes) == ("llama-3.1-70b", 32) else ""
        print(f"| {model} | {mesh} × {nodes} ({ranks:,}) | {batch} × {seq} | {runs[0][2]:,} ({runs[0][3]:,}) | "
              f"{sweep:.1f} | {wall:.1f} | {verdict or '—'} | {runs[0][4]} |")


if __name__ == "__main__":
    main()
