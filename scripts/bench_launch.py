"""Benchmark `rainier launch`: tokens/s of the default 8-rank run (tiny model, trn2-mini-8, dp=8,
batch 32 × seq 128) in one process against two processes of 4 ranks each (`rainier launch
--processes 2`, collectives between them over gloo on loopback). Runs are interleaved round-robin
so machine noise falls on both alike; medians of each run's median tokens/s after warm-up.

    PYTHONPATH=. python scripts/bench_launch.py [--repeats 3] [--steps 20] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_emulation import append_section, run_once  # noqa: E402

CONFIGS = {"1 process × 8 ranks": (), "2 processes × 4 ranks": ("launch", "--processes", "2", "--")}
LAYOUTS = ("dp=8", "dp=2,fsdp=2,tp=2")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the table to docs/BENCHMARKS.md")
    args = ap.parse_args()
    load = f"load average at start {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    results = {(layout, name): [] for layout in LAYOUTS for name in CONFIGS}
    compiles = {key: [] for key in results}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for layout in LAYOUTS:
                for name, launcher in CONFIGS.items():
                    metrics = Path(tmp) / f"{r}-{len(results[(layout, name)])}-{layout}-{len(launcher)}.jsonl"
                    tps, compiled = run_once(args, "trn2-mini-8", layout, metrics, launcher=launcher)
                    results[(layout, name)].append(tps)
                    compiles[(layout, name)].append(compiled)
                    print(f"run {r + 1}/{args.repeats} {layout:<18} {name:<24} {tps:>9,.0f} tokens/s", flush=True)
    lines = ["| layout | processes | tokens/s (median) | runs | × 1 process | compile s |", "|---|---|---:|---|---:|---:|"]
    for layout in LAYOUTS:
        base = statistics.median(results[(layout, "1 process × 8 ranks")])
        for name in CONFIGS:
            med = statistics.median(results[(layout, name)])
            runs = ", ".join(f"{x:,.0f}" for x in results[(layout, name)])
            lines.append(f"| {layout} | {name} | {med:,.0f} | {runs} | {med / base:.2f} | "
                         f"{statistics.median(compiles[(layout, name)]):.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        append_section("rainier launch: one process against two on loopback", args, load, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
