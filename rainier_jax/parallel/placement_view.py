"""Text pictures of a topology and of where a parallel layout lands on it (`rainier mesh show`)."""

from __future__ import annotations

import numpy as np

from rainier_jax.parallel.layout import AXES, ParallelLayout
from rainier_jax.parallel.placement import axis_links, describe_links, layout_warnings
from rainier_jax.hardware.topology import Topology


def _grid(topo: Topology, label) -> list[str]:
    """One block per instance, one line per torus row; a chip is `[...]` of its ranks' labels."""
    X, Y = topo.torus
    width = max(len(str(label(r))) for r in range(topo.num_ranks))
    lines = []
    for inst in range(topo.instances):
        lines.append(f"  instance {inst}")
        for y in range(Y):
            chips = []
            for x in range(X):
                first = (inst * topo.chips_per_instance + y * X + x) * topo.ranks_per_chip
                cells = " ".join(str(label(r)).rjust(width) for r in range(first, first + topo.ranks_per_chip))
                chips.append(f"[{cells}]")
            lines.append(f"    y{y}  " + " ".join(chips))
    return lines


def render_topology(topo: Topology) -> str:
    X, Y = topo.torus
    head = (f"{topo.name}: {topo.instances} instance{'s' if topo.instances > 1 else ''} × "
            f"{X}×{Y} chip torus × {topo.ranks_per_chip} ranks per chip (LNC={topo.lnc}) = "
            f"{topo.num_ranks} ranks")
    hbm = topo.hbm_bytes_per_rank / 2**30
    lines = [head,
             f"HBM {topo.hbm_bytes_per_chip / 2**30:g} GiB per chip ({hbm:g} GiB per rank); peak per chip: "
             + ", ".join(f"{k} {v / 1e12:g} TFLOP/s" for k, v in topo.peak_flops.items()),
             "links: " + "; ".join(
                 f"{c.name} {c.gbps:g} GB/s{' per direction' if c.per_direction else ''}, {c.latency_us:g} µs"
                 for c in topo.links.values()),
             "",
             "rank ids (chips left to right along x; " +
             ("instances joined in a ring along Z)" if topo.instances > 1 else "one instance)")]
    lines += _grid(topo, lambda r: r)
    return "\n".join(lines)


def render_layout(topo: Topology, layout: ParallelLayout, placement: np.ndarray) -> str:
    coords = {}
    for idx in np.ndindex(placement.shape):
        coords[int(placement[idx])] = dict(zip(AXES, idx))
    lines = [f"layout {layout} on {topo.name}"]
    for al in axis_links(layout, topo, placement):
        lines.append(f"  {describe_links(al)}; e.g. ranks {', '.join(map(str, al.example))}")
    for axis in AXES:
        if getattr(layout, axis) == 1:
            continue
        lines.append("")
        lines.append(f"{axis} index of each rank ({axis}={getattr(layout, axis)})")
        lines += _grid(topo, lambda r, a=axis: coords[r][a])
    lines += layout_warnings(layout, topo, placement)
    return "\n".join(lines)


def render_mesh(topo: Topology, layout: ParallelLayout | None = None, placement: np.ndarray | None = None) -> str:
    """What `rainier mesh show` prints: the topology and, given a layout and its placement, where
    the layout's axes land (`rj.emulate().describe()` shows the same text)."""
    if layout is None:
        return render_topology(topo)
    return f"{render_topology(topo)}\n\n{render_layout(topo, layout, placement)}"
