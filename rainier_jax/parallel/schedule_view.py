"""Show a pipeline schedule: a text timeline, a Chrome/Perfetto trace, a PNG timeline."""

from __future__ import annotations

import json
from pathlib import Path

from rainier_jax.parallel.schedules import IDLE, Schedule


def _cell(kind: str, g: int, m: int, s: Schedule) -> str:
    return f"{kind}{m}" + (f"/{g // s.P}" if s.V > 1 else "")


def _ops(s: Schedule):
    """(tick, device, 'F'|'B', chunk, microbatch) for every op in the table."""
    for t in range(s.ticks):
        for p in range(s.P):
            for kind, table in (("F", s.fwd), ("B", s.bwd)):
                g, m = (int(v) for v in table[t, p])
                if g != IDLE:
                    yield t, p, kind, g, m


def render_text(s: Schedule) -> str:
    cells = {(t, p): [] for t in range(s.ticks) for p in range(s.P)}
    for t, p, kind, g, m in _ops(s):
        cells[(t, p)].append(_cell(kind, g, m, s))
    width = max([len("+".join(c)) for c in cells.values()] + [len(str(s.ticks - 1))])
    chunk_note = " (F3/1 = forward of microbatch 3 on the device's virtual stage 1)" if s.V > 1 else ""
    lines = [f"{s.kind.value}: pp={s.P}, microbatches={s.M}" + (f", virtual stages={s.V}" if s.V > 1 else "")
             + f" — {s.ticks} ticks{chunk_note}",
             "tick     " + " ".join(str(t).rjust(width) for t in range(s.ticks))]
    for p in range(s.P):
        row = " ".join(("+".join(cells[(t, p)]) or "·").rjust(width) for t in range(s.ticks))
        lines.append(f"stage {p:<2} {row}")
    peak = s.peak_in_flight()
    lines += ["",
              f"bubble fraction: {s.bubble():.4f} (theory {s.theoretical_bubble():.4f}: "
              + ("(P−1)/(V·M+P−1)" if s.V > 1 else "(P−1)/(M+P−1)") + ")",
              "peak in-flight activations per stage (microbatch-chunks held): "
              + ", ".join(f"stage {p}: {n}" for p, n in enumerate(peak))]
    return "\n".join(lines)


def write_trace(s: Schedule, path: Path) -> None:
    """Chrome trace-event JSON (open in Perfetto or chrome://tracing): one thread per stage,
    one tick = 1 ms of trace time."""
    events = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": p, "args": {"name": f"stage {p}"}}
              for p in range(s.P)]
    for t, p, kind, g, m in _ops(s):
        events.append({"name": _cell(kind, g, m, s), "cat": "forward" if kind == "F" else "backward",
                       "ph": "X", "ts": t * 1000, "dur": 1000, "pid": 0, "tid": p,
                       "args": {"microbatch": m, "chunk": g, "virtual_stage": g // s.P, "tick": t}})
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}, indent=1) + "\n")


def write_png(s: Schedule, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, s.ticks * 0.3), 0.6 * s.P + 1.2))
    cmap = plt.get_cmap("tab10")
    for t, p, kind, g, m in _ops(s):
        color = cmap(m % 10)
        ax.broken_barh([(t, 1)], (s.P - 1 - p, 0.8), facecolors=color, edgecolor="black",
                       hatch="" if kind == "F" else "//", alpha=1.0 if kind == "F" else 0.6)
        ax.text(t + 0.5, s.P - 1 - p + 0.4, _cell(kind, g, m, s), ha="center", va="center", fontsize=6)
    ax.set_yticks([s.P - 1 - p + 0.4 for p in range(s.P)], [f"stage {p}" for p in range(s.P)])
    ax.set_xlabel("tick (forward: solid, backward: hatched)")
    ax.set_xlim(0, s.ticks)
    ax.set_title(f"{s.kind.value}, pp={s.P}, M={s.M}" + (f", V={s.V}" if s.V > 1 else "")
                 + f": bubble {s.bubble():.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
