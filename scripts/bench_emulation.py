"""Emulation throughput: the default model and batch on 1 emulated device vs. the 8-rank mesh.

Every run is `rainier train` in its own subprocess (JAX's device count is fixed per process). The
configurations are interleaved round-robin, `--repeats` times, so machine noise spreads evenly;
per run the median `tokens_per_s` of the metrics file (warm-up steps skipped) is taken, and the
table shows the median over runs. A benchmark, not a test: a missed target never fails the exit code.

    PYTHONPATH=. python scripts/bench_emulation.py [--steps 20] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rainier_jax.config.typed import resolve_named_file  # noqa: E402  (no JAX import)

BASELINE = "1 device"
LAYOUTS = ["dp=8", "fsdp=8", "tp=8", "dp=2,fsdp=2,tp=2", "dp=4,tp=2"]
TARGETED = {"dp=8", "fsdp=8", "dp=2,fsdp=2,tp=2"}  # must reach --target × the 1-device tokens/s


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _toml(table: dict, prefix: str = "") -> str:
    """Enough of a TOML writer for a mesh file: scalars and lists first, then sub-tables."""
    lines = [f'"{k}" = {_toml_value(v)}' for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += ["", f"[{prefix}{k}]", _toml(v, f"{prefix}{k}.")]
    return "\n".join(lines)


def one_rank_mesh(mesh: str, tmp: Path) -> Path:
    """`mesh`'s chip and link figures with a single rank: 1 instance, a 1×1 torus, 1 rank per chip."""
    data = tomllib.loads(resolve_named_file(mesh, "meshes", "mesh").read_text())
    data |= {"name": f"{data['name']}-1rank", "description": f"{data['name']} figures, 1 rank (benchmark)",
             "instances": 1, "torus": [1, 1], "ranks_per_chip": {str(data["default_lnc"]): 1}}
    path = tmp / "one-rank.toml"
    path.write_text(_toml(data) + "\n")
    return path


def run_once(args, mesh: str, layout: str | None, metrics: Path, extra: tuple[str, ...] = (),
             launcher: tuple[str, ...] = ()) -> tuple[float, float]:
    """One `rainier train` subprocess (plus `extra` flags; behind `launcher`, e.g. `launch
    --processes 2 --`) → (median tokens/s after warm-up, compile s)."""
    cmd = [sys.executable, "-m", "rainier_jax.cli", *launcher, "train", "--mesh", mesh, "--steps", str(args.steps),
           "--eval-every", "0", "--metrics", str(metrics)] + (["--parallel", layout] if layout else []) + list(extra)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd[1:])} exited {p.returncode}:\n{p.stderr[-2000:]}")
    compiled = re.search(r"compiled in ([\d.]+) s", p.stdout)
    tps = [json.loads(line)["tokens_per_s"] for line in metrics.read_text().splitlines() if line.strip()]
    return statistics.median(tps[args.warmup:] or tps), float(compiled.group(1)) if compiled else float("nan")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return (f"{platform.machine()}, {cpu}, {os.cpu_count()} cores; "
            f"python {platform.python_version()}, jax {version('jax')}, jaxlib {version('jaxlib')}")


def append_section(title: str, args, load: str, table: str) -> None:
    """Append a dated section — machine, exact command, commit, method, table — to docs/BENCHMARKS.md."""
    command = "PYTHONPATH=. python " + shlex.join([f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    section = (f"\n## {datetime.date.today().isoformat()} — {title}\n\n"
               f"- machine: {machine()}; {load}\n- command: `{command}` at commit {commit}\n"
               f"- {args.steps} steps per run, first {args.warmup} skipped; {args.repeats} runs per "
               f"configuration, interleaved; medians over runs of each run's median\n\n{table}\n")
    out = ROOT / "docs" / "BENCHMARKS.md"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(section)
    print(f"appended to {out.relative_to(ROOT)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", default="trn2-mini-8", help="the multi-rank mesh [trn2-mini-8]")
    ap.add_argument("--steps", type=int, default=20, help="steps per run [20]")
    ap.add_argument("--warmup", type=int, default=2, help="first steps of each run not counted [2]")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration, round-robin [3]")
    ap.add_argument("--layout", action="append", help=f"layout(s) to run instead of {' '.join(LAYOUTS)}")
    ap.add_argument("--target", type=float, default=0.85, help="ratio to 1 device to reach [0.85]")
    ap.add_argument("--write", action="store_true", help="append a dated section to docs/BENCHMARKS.md")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error(f"--steps must exceed --warmup ({args.warmup})")

    layouts = args.layout or LAYOUTS
    load = "load average at start {:.1f}, {:.1f}, {:.1f}".format(*os.getloadavg())
    results: dict[str, list[tuple[float, float]]] = {c: [] for c in [BASELINE, *layouts]}
    with tempfile.TemporaryDirectory(prefix="bench_emulation_") as tmp:
        one = one_rank_mesh(args.mesh, Path(tmp))
        for r in range(args.repeats):
            for config in results:  # round-robin: every configuration once per repeat
                mesh, layout = (str(one), None) if config == BASELINE else (args.mesh, config)
                try:  # a failed run is a broken setup, not a slow layout: stop, write nothing
                    tps, comp = run_once(args, mesh, layout, Path(tmp) / f"m{r}-{config}.jsonl")
                except RuntimeError as e:
                    sys.exit(f"bench_emulation: {e}")
                results[config].append((tps, comp))
                print(f"repeat {r + 1}/{args.repeats}  {config:<18} {tps:8,.0f} tok/s  compile {comp:.1f} s",
                      file=sys.stderr, flush=True)

    med = {c: (statistics.median(t for t, _ in v), statistics.median(s for _, s in v))
           for c, v in results.items()}
    base = med[BASELINE][0]
    rows = ["| layout | ranks | median tokens/s | × 1 device | median compile s | target |",
            "|---|---:|---:|---:|---:|---|"]
    for c in results:
        tps, comp = med[c]
        ratio = tps / base
        verdict = (f"{'PASS' if ratio >= args.target else 'MISS'} (≥ {args.target:g}×)" if c in TARGETED else "—")
        ranks = 1 if c == BASELINE else math.prod(int(x.split("=")[1]) for x in c.split(","))
        rows.append(f"| {c} | {ranks} | {tps:,.0f} | {ratio:.2f} | {comp:.1f} | {verdict} |")
    table = "\n".join(rows)
    print(table)

    if args.write:
        append_section(f"{args.mesh}, default model and batch", args, load, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
