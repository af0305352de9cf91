"""Show and keep a parity result: the printed table, `report.json`, and PNG plots.

Reports are deterministic — no timestamps, no timings, fixed PNG metadata — so the same command
run twice writes byte-identical files, and a diff of two reports shows only what changed.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from rainier_jax.parity.harness import FREE_LOSS_RTOL, ParityResult

TABLE_ROWS = 12


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(a) if a else abs(b)


def format_result(r: ParityResult, *, header: str) -> str:
    lines = [header, f"bound: {r.bound.describe()}", "",
             "lock-step losses (both at the reference's parameters)",
             f"  {'step':>4}  {'loss_ref':>12}  {'loss_cand':>12}  {'rel_err':>9}  {'limit':>9}"]
    for i, (a, b) in enumerate(zip(r.loss_ref, r.loss_cand), 1):
        lines.append(f"  {i:>4}  {a:>12.8f}  {b:>12.8f}  {_rel(a, b):>9.2e}  {r.loss_limit:>9.2e}")
    lines += ["", f"gradients, worst first ({len(r.tensors)} tensors; stacked layers split per layer)",
              f"  {'path':<22} {'depth':>5} {'step':>4}  {'rel_l2':>9}  {'max_abs':>9}  {'limit':>9}  {'ratio':>6}"]
    for t in r.tensors[:TABLE_ROWS]:
        lines.append(f"  {t.path:<22} {t.depth:>5} {t.step:>4}  {t.rel_l2:>9.2e}  {t.max_abs:>9.2e}  "
                     f"{t.limit:>9.2e}  {t.ratio:>6.3f}")
    if len(r.tensors) > TABLE_ROWS:
        lines.append(f"  … {len(r.tensors) - TABLE_ROWS} more within {r.tensors[TABLE_ROWS].ratio:.3f} of their limits")
    free_rel = max((_rel(a, b) for a, b in zip(r.free_loss_ref, r.free_loss_cand)), default=0.0)
    worst = r.free_params[0]
    lines += ["", f"free-running (information, not the verdict): losses differ by at most {free_rel:.2e} "
                  f"relative (bound {FREE_LOSS_RTOL:g}); final parameters worst {worst.path} max_abs "
                  f"{worst.max_abs:.2e} (bound 2·Σlr = {worst.limit:.2e}) — "
                  + ("within" if r.free_ok else "OUTSIDE") + " its bound"]
    lines.append("verdict: PASS" if r.passed else f"verdict: FAIL — {r.first_violation}")
    return "\n".join(lines)


def matrix_row(r: ParityResult) -> str:
    worst = r.tensors[0]
    loss_rel = max((_rel(a, b) for a, b in zip(r.loss_ref, r.loss_cand)), default=0.0)
    return (f"{r.candidate:<28} {'PASS' if r.passed else 'FAIL':<5} {worst.path:<20} {worst.rel_l2:>9.2e} "
            f"{worst.ratio:>6.3f} {loss_rel:>9.2e}  {'ok' if r.free_ok else 'outside'}")


MATRIX_HEADER = (f"{'layout':<28} {'':<5} {'worst tensor':<20} {'rel_l2':>9} {'ratio':>6} {'loss_rel':>9}  free-running")


def environment() -> dict:
    import jax
    import jaxlib
    import numpy
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def to_json(r: ParityResult, settings: dict) -> dict:
    def tensor(t):
        return {"path": t.path, "depth": t.depth, "step": t.step, "rel_l2": t.rel_l2,
                "max_abs": t.max_abs, "limit": t.limit, "limit_on": t.limit_on, "ok": t.ok}
    return {
        "verdict": "pass" if r.passed else "fail",
        "first_violation": r.first_violation,
        "reference": r.reference, "candidate": r.candidate,
        "bound": r.bound.describe(), "bound_kind": r.bound.kind,
        "loss_limit": r.loss_limit,
        "steps": [{"step": i, "loss_ref": a, "loss_cand": b}
                  for i, (a, b) in enumerate(zip(r.loss_ref, r.loss_cand), 1)],
        "tensors": [tensor(t) for t in r.tensors],
        "free_running": {
            "ok": r.free_ok, "loss_rtol": FREE_LOSS_RTOL,
            "steps": [{"step": i, "loss_ref": a, "loss_cand": b}
                      for i, (a, b) in enumerate(zip(r.free_loss_ref, r.free_loss_cand), 1)],
            "final_params": [tensor(t) for t in r.free_params],
        },
        "settings": settings,
        "environment": environment(),
    }


def write_report(r: ParityResult, directory: Path, settings: dict) -> list[Path]:
    """Write report.json and the plots into `directory`; returns the files written, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(to_json(r, settings), indent=2) + "\n")
    return [directory / "report.json", *_plots(r, directory)]


def _plots(r: ParityResult, directory: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    steps = range(1, len(r.loss_ref) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(steps, [max(_rel(a, b), 1e-12) for a, b in zip(r.loss_ref, r.loss_cand)], "o-",
                label="lock-step")
    ax.semilogy(steps, [max(_rel(a, b), 1e-12) for a, b in zip(r.free_loss_ref, r.free_loss_cand)], "s--",
                label="free-running")
    ax.axhline(max(r.loss_limit, 1e-12), color="red", lw=1, label="lock-step limit")
    _finish(fig, ax, "step", "relative loss difference (floor 1e-12)",
            f"{r.candidate} vs {r.reference}: loss", directory / "loss_diff.png")

    # Per-layer gradient error: worst tensor of each depth, against the depth's limit.
    by_depth: dict[int, float] = {}
    limits: dict[int, float] = {}
    for t in r.tensors:
        by_depth[t.depth] = max(by_depth.get(t.depth, 0.0), t.rel_l2)
        limits[t.depth] = t.limit
    depths = sorted(by_depth)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(depths, [max(by_depth[d], 1e-12) for d in depths], "o-", label="worst rel_l2")
    ax.semilogy(depths, [max(limits[d], 1e-12) for d in depths], "r-", lw=1, label="limit")
    _finish(fig, ax, "depth (0 = head … L+1 = embedding)", "gradient relative L2 error",
            f"{r.candidate} vs {r.reference}: gradients by layer", directory / "grad_error_by_layer.png")
    return [directory / "loss_diff.png", directory / "grad_error_by_layer.png"]


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    # No software/date stamps in the PNG: identical runs give identical files.
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
