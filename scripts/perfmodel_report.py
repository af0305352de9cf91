"""The numbers and the figure of docs/PERFMODEL.md: calibration rows, the planner's choice for each
full-scale scenario, and a PNG of the step-time breakdown of the top layouts per scenario.

    PYTHONPATH=. python scripts/perfmodel_report.py [--png docs/perfmodel_breakdown.png]

Analytic only (no JAX); prints markdown tables. Deterministic: the model has no noise.
"""

from __future__ import annotations

import argparse
import time

from rainier_jax.perf import calibration
from rainier_jax.perf import published
from rainier_jax.perf.estimate_view import size
from rainier_jax.spec.model import load_model
from rainier_jax.perf.planner import breakdown, describe_settings, plan
from rainier_jax.hardware.topology import load_topology, with_nodes

SCENARIOS = [
    # (label, model, mesh, nodes, global batch, seq)
    ("llama-3.1-8b · 1 trn2 instance", "llama-3.1-8b", "trn2-instance", 1, 128, 8192),
    ("llama-3.1-70b · 1 UltraServer", "llama-3.1-70b", "trn2-ultraserver", 1, 1024, 8192),
    ("llama-3.1-70b · 2 UltraServers", "llama-3.1-70b", "trn2-ultraserver", 2, 1024, 8192),
    ("llama-3.1-70b · 4 UltraServers", "llama-3.1-70b", "trn2-ultraserver", 4, 1024, 8192),
]
PARTS = ("compute", "bubble", "tp comm", "fsdp comm", "dp comm", "dp×fsdp comm", "pp comm")


def calibration_table() -> list[str]:
    lines = ["| published run | layout (nodes × 32 ranks) | published seq/s | predicted seq/s | error | "
             "predicted MFU | role |", "|---|---|---:|---:|---:|---:|---|"]
    for r in published.rows():
        e = published.predict(r)
        role = "calibrates `compute`" if r.model == calibration.CALIBRATION_ROW else "validates"
        lines.append(f"| {r.model} (Neuron {r.neuron_release}) | {r.nodes} × trn1, tp={r.tp} dp={r.dp} ZeRO-1, "
                     f"M={e.run.microbatches}, seq {r.seq_len} | {r.seq_per_s:g} | {e.seq_per_s:.1f} | "
                     f"{e.seq_per_s / r.seq_per_s - 1:+.1%} | {e.mfu:.1%} | {role} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--png", default=None, help="write the breakdown figure here")
    ap.add_argument("--top", type=int, default=3, help="layouts per scenario in the figure [3]")
    args = ap.parse_args()

    print("\n".join(calibration_table()))
    print(f"\nderived compute efficiency {published.derive_compute():.4f} → {calibration.COMPUTE}; "
          f"link efficiency {calibration.LINKS}\n")
    print("| scenario | batch × seq | chosen layout (planner's #1) | step | tokens/s | MFU | HBM per rank | "
          "candidates fitting / swept | sweep |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    figure = []
    for label, model, mesh, nodes, batch, seq in SCENARIOS:
        topo = with_nodes(load_topology(mesh), nodes)
        t0 = time.perf_counter()
        p = plan(load_model(model), topo, batch=batch, seq=seq, precision="bf16-mixed")
        sweep = time.perf_counter() - t0
        best = p.ranked[0]
        print(f"| {label} ({topo.num_ranks:,} ranks) | {batch} × {seq} | {describe_settings(best)} | "
              f"{best.step_time_s:.2f} s | {best.tokens_per_s:,.0f} | {best.mfu:.1%} | {size(best.memory.total)} | "
              f"{len(p.ranked):,} / {p.considered:,} | {sweep:.1f} s |")
        seen = set()
        for e in p.ranked:   # the best settings of each of the top layouts
            if e.layout not in seen:
                seen.add(e.layout)
                figure.append((label, e))
            if len(seen) == args.top:
                break
    if args.png:
        write_png(figure, args.png)
        print(f"\nwrote {args.png}")


def write_png(figure, path: str) -> None:
    """One panel per scenario (its own time axis), one bar per layout, stacked by part."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(label for label, _ in figure))
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(10, 1.0 + 0.42 * len(figure) + 0.55 * len(scenarios)))
    colours = dict(zip(PARTS, ("#4c72b0", "#c7c7c7", "#dd8452", "#8172b3", "#55a868", "#64b5cd", "#c44e52")))
    used = set()
    for ax, scenario in zip(axes, scenarios):
        rows = [e for label, e in figure if label == scenario]
        for i, e in enumerate(rows):
            parts, left = breakdown(e), 0.0
            for part in PARTS:
                width = parts.get(part, 0.0)
                if width > 0:
                    ax.barh(i, width, left=left, color=colours[part], label=None if part in used else part)
                    used.add(part)
                    left += width
            ax.text(left, i, f" {e.step_time_s:.1f} s · {e.tokens_per_s / 1e3:,.0f}k tok/s · MFU {e.mfu:.0%}",
                    va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), [describe_settings(e) for e in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(e.step_time_s for e in rows) * 1.45)
        ax.set_title(f"{scenario} ({rows[0].topo.num_ranks:,} ranks, batch {rows[0].run.batch} × {rows[0].run.seq})",
                     fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1].set_xlabel("predicted step time (s) = compute + bubble + communication per axis (no overlap)", fontsize=8)
    fig.legend(loc="lower center", fontsize=7, ncols=len(used))
    fig.suptitle("rainier estimate: the planner's top layouts per scenario (recipe nxd, bf16-mixed)", fontsize=10,
                 x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
