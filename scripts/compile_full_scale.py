"""Compile rainier's real train step for Llama-3.1-70B on 1,024 emulated ranks and report it.

Four Trn2 UltraServers (`trn2-ultraserver` × 4 nodes = 1,024 ranks at LNC=2), bf16-mixed, sequence
8,192, full rematerialisation, ZeRO-1, global batch 256 sequences. For each layout the step is
lowered and compiled from abstract shapes (`compiled.profile_step`: nothing is allocated) and the
table shows compile time, HBM per rank (argument + output − alias + temp), argument bytes, dot
TFLOP per rank and collective bytes per rank and step by the axes they span.

Each layout runs in its own subprocess — JAX's device count is fixed per process, and a child
that takes longer than `--timeout` seconds or holds more than `--max-rss-gib` is stopped and the
layout reported as dropped. The peak RSS column is the child's own `ru_maxrss`.

    PYTHONPATH=. python scripts/compile_full_scale.py [--layouts "tp=16,dp=64;tp=32,dp=32"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL = "llama-3.1-70b"
MESH, NODES = "trn2-ultraserver", 4
SETTINGS = dict(precision="bf16-mixed", seq=8192, remat="full", zero1=True, batch=256)
# layout → (microbatches, schedule)
LAYOUTS = {
    "tp=16,dp=64": (1, "1f1b"),
    "tp=16,fsdp=64": (1, "1f1b"),
    "tp=16,pp=4,dp=16": (16, "1f1b"),
    "tp=32,dp=32": (1, "1f1b"),
}
GIB = 2**30


# --- the child: one layout, one process ---------------------------------------------------------

def _axes_label(c) -> str:
    """`tp`, `dp+fsdp`; `tp sub` for a collective among part of each tp group (`partial`)."""
    return ("+".join(c.axes) or "none") + (" sub" if c.partial else "")


def profile_one(layout_text: str) -> dict:
    """Compile one layout in this process (JAX not started yet) and return the figures."""
    import resource

    sys.path.insert(0, str(ROOT))
    from rainier_jax.hardware.topology import load_topology, with_nodes
    topo = with_nodes(load_topology(MESH), NODES)
    import jax   # sized before anything runs on it
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", topo.num_ranks)

    from rainier_jax.perf import compiled
    from rainier_jax.perf.collectives import bytes_by
    from rainier_jax.parallel.experiment import resolve
    from rainier_jax.parallel.layout import parse_layout
    from rainier_jax.spec.model import load_model
    from rainier_jax.spec.run import RunConfig

    model = load_model(MODEL)
    layout = parse_layout(layout_text, topo.num_ranks)
    microbatches, schedule = LAYOUTS.get(layout_text, (1, "1f1b"))
    run = RunConfig(steps=1, eval_every=0, microbatches=microbatches, schedule=schedule, **SETTINGS)
    compiled.check_compilable(model, topo, layout)
    t0 = time.perf_counter()
    p = compiled.profile_step(resolve(topo, model, layout, run))
    wall = time.perf_counter() - t0
    by_kind: dict[str, int] = {}
    by_axes: dict[str, int] = {}
    for (kind, axes), nbytes in bytes_by(p.collectives, axes=_axes_label).items():
        by_kind[f"{kind} {axes}"] = nbytes
        by_axes[axes] = by_axes.get(axes, 0) + nbytes
    return {
        "layout": layout_text, "microbatches": microbatches, "schedule": schedule,
        "compile_seconds": p.compile_seconds, "profile_seconds": wall,
        "hbm_bytes": p.hbm_bytes, "argument_bytes": p.argument_bytes, "output_bytes": p.output_bytes,
        "alias_bytes": p.alias_bytes, "temp_bytes": p.temp_bytes, "dot_flops": p.dot_flops,
        "bytes_by_axes": by_axes,
        "bytes_by_kind": dict(sorted(by_kind.items())),
        "dtypes": sorted({f"{c.kind} {_axes_label(c)} ×{c.group_size} {c.dtype}" for c in p.collectives}),
        "num_collectives": len(p.collectives),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,   # Linux: KiB
    }


# --- the parent: one subprocess per layout, watched ---------------------------------------------

def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(layout_text: str, timeout: float, max_rss: int) -> dict:
    """Run one layout in a subprocess; stop it when it outruns `timeout` or `max_rss`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, __file__, "--one", layout_text], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, peak = time.monotonic(), 0
    while child.poll() is None:
        peak = max(peak, _rss_bytes(child.pid))
        reason = (f"took more than {timeout:.0f} s" if time.monotonic() - start > timeout else
                  f"held more than {max_rss / GIB:.0f} GiB" if peak > max_rss else None)
        if reason:
            child.kill()
            child.communicate()
            return {"layout": layout_text, "dropped": reason}
        time.sleep(0.5)
    out, err = child.communicate()
    if child.returncode != 0:
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        return {"layout": layout_text, "dropped": f"failed (exit {child.returncode}): {last}"}
    return json.loads(out.strip().splitlines()[-1])


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f}"


def print_table(rows: list[dict]) -> None:
    done = [r for r in rows if "dropped" not in r]
    axes = sorted({a for r in done for a in r["bytes_by_axes"]}, key=lambda a: (a.count("+"), a))
    head = ["layout", "compile s", "HBM GiB", "args GiB", "dot TFLOP", "peak RSS GiB"] + [f"{a} GiB" for a in axes]
    lines = [head]
    for r in done:
        lines.append([r["layout"], f"{r['compile_seconds']:.1f}", _gib(r["hbm_bytes"]), _gib(r["argument_bytes"]),
                      f"{r['dot_flops'] / 1e12:,.1f}", _gib(r["peak_rss_bytes"])]
                     + [_gib(r["bytes_by_axes"].get(a, 0)) if a in r["bytes_by_axes"] else "-" for a in axes])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    print("\ncollective GiB per rank per step by kind and axes:")
    for r in done:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in r["bytes_by_kind"].items())
        print(f"  {r['layout']}: {parts}  ({r['num_collectives']} collectives)")
    for r in rows:
        if "dropped" in r:
            print(f"dropped {r['layout']}: {r['dropped']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)   # child mode
    ap.add_argument("--layouts", help="';'-separated layouts (default: the four in LAYOUTS)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per layout before it is dropped")
    ap.add_argument("--max-rss-gib", type=float, default=16.0, help="host memory per layout before it is dropped")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(profile_one(args.one)))
        return
    layouts = args.layouts.split(";") if args.layouts else list(LAYOUTS)
    print(f"{MODEL} on {MESH} × {NODES}: {', '.join(f'{k} {v}' for k, v in SETTINGS.items())}")
    rows = []
    for text in layouts:
        row = run_child(text, args.timeout, int(args.max_rss_gib * GIB))
        rows.append(row)
        print(f"  {text}: " + (row["dropped"] if "dropped" in row else
                               f"compiled in {row['compile_seconds']:.1f} s, peak RSS {_gib(row['peak_rss_bytes'])} GiB"),
              flush=True)
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
