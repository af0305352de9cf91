"""Precision presets' throughput: tokens/s of each preset on the 8-rank mesh, against fp32.

Every run is `rainier train --precision P` in its own subprocess, presets interleaved round-robin
`--repeats` times so machine noise spreads evenly; per run the median tokens/s after warm-up, and
the table shows the median over runs and the ratio to fp32 measured in the same session. Target:
bf16-mixed ≥ 1.3× fp32. A benchmark, not a test: a miss never fails the exit code.

    PYTHONPATH=. python scripts/bench_precision.py [--layout dp=8] [--steps 20] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_emulation import append_section, run_once  # noqa: E402
from rainier_jax.spec.precision import PRESETS  # noqa: E402  (no JAX import)

TARGET = {"bf16-mixed": 1.3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", default="trn2-mini-8", help="mesh [trn2-mini-8]")
    ap.add_argument("--layout", action="append", help="layout(s) [dp=8, the default layout]")
    ap.add_argument("--precision", action="append", help=f"preset(s) [all: {', '.join(PRESETS)}]")
    ap.add_argument("--batch", type=int, default=None, help="global sequences per step [train's default, 32]")
    ap.add_argument("--steps", type=int, default=20, help="steps per run [20]")
    ap.add_argument("--warmup", type=int, default=3, help="first steps of each run not counted [3]")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration, round-robin [3]")
    ap.add_argument("--write", action="store_true", help="append a dated section to docs/BENCHMARKS.md")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error(f"--steps must exceed --warmup ({args.warmup})")
    presets = args.precision or list(PRESETS)
    if "fp32" not in presets:
        presets = ["fp32", *presets]   # the baseline is always measured in the same session
    layouts = args.layout or ["dp=8"]

    load = "load average at start {:.1f}, {:.1f}, {:.1f}".format(*os.getloadavg())
    results = {(lay, p): [] for lay in layouts for p in presets}
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        for r in range(args.repeats):
            for (lay, p) in results:
                try:
                    extra = ("--precision", p) + (("--batch", str(args.batch)) if args.batch else ())
                    tps, _ = run_once(args, args.mesh, lay, Path(tmp) / f"m{r}-{lay}-{p}.jsonl", extra)
                except RuntimeError as e:
                    sys.exit(f"bench_precision: {e}")
                results[(lay, p)].append(tps)
                print(f"repeat {r + 1}/{args.repeats}  {lay:<18} {p:<11} {tps:8,.0f} tok/s", file=sys.stderr, flush=True)

    rows = ["| layout | precision | bytes/param | median tokens/s | runs (tokens/s) | × fp32 | target |",
            "|---|---|---:|---:|---|---:|---|"]
    for (lay, p), runs in results.items():
        med = statistics.median(runs)
        ratio = med / statistics.median(results[(lay, "fp32")])
        target = TARGET.get(p)
        verdict = f"{'PASS' if ratio >= target else 'MISS'} (≥ {target:g}×)" if target else "—"
        rows.append(f"| {lay} | {p} | {PRESETS[p].bytes_per_param()['total']} | {med:,.0f} | "
                    f"{', '.join(f'{x:,.0f}' for x in runs)} | {ratio:.2f} | {verdict} |")
    table = "\n".join(rows)
    print(table)

    if args.write:
        batch = f"batch {args.batch}" if args.batch else "default batch (32)"
        append_section(f"precision presets on {args.mesh}, default model, {batch} × seq 128", args, load, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
