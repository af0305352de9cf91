"""Where a layout lands on the topology: each axis placed on ranks, the links each axis crosses,
Neuron's ring rules, and the layouts a topology admits.

Placement is one function (`place`), used through the resolved experiment (parallel/experiment.py)
by every command and by the planner. Ranks are
numbered as mixed-radix digits (core, x, y, instance) from fastest to slowest; each parallel axis
takes digits (or whole-number splits of digits):
  * tp takes the cores of a chip first, then torus neighbours (x, then y), then instances —
    tensor-parallel collectives are the most frequent, so they get the fastest links;
  * pp takes instances first, then torus rows/columns, from the slow end — stage-to-stage traffic
    is small point-to-point sends that tolerate the slow links;
  * fsdp takes the fastest of what remains (it all-gathers parameters every layer), dp the rest.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.hardware.topology import LINK_CLASSES, Topology
from rainier_jax.parallel.layout import AXES, ParallelLayout, factorisations, matrix_microbatches
from rainier_jax.parallel.validate import validate
from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.run import RunConfig


@dataclasses.dataclass(frozen=True)
class Segment:
    """A factor of one physical digit assigned to one parallel axis."""
    dim: str      # core, x, y, instance or node
    size: int
    axis: str


def _take(remaining: list[list], n: int, axis: str, from_slow: bool, layout, topo) -> list[Segment]:
    """Take `n` ranks' worth of digits for `axis`; `remaining` holds [dim, size] pairs fast→slow."""
    taken = []
    order = range(len(remaining) - 1, -1, -1) if from_slow else range(len(remaining))
    for i in order:
        if n == 1:
            break
        dim, size = remaining[i]
        if size == 1:
            continue
        if n % size == 0:
            part = size
        elif size % n == 0:
            part = n
        else:
            raise ConfigError(
                f"{marked('parallel')} {layout}: {axis}={getattr(layout, axis)} cannot be placed on {topo.name} "
                f"({_dims_text(topo)}): each axis must take whole divisors of these dimensions")
        remaining[i][1] = size // part
        n //= part
        taken.append((i, Segment(dim, part, axis)))
    if n != 1:
        raise ConfigError(f"{marked('parallel')} {layout}: {axis} does not fit on {topo.name} ({_dims_text(topo)})")
    return taken


def _dims_text(topo: Topology) -> str:
    X, Y = topo.torus
    nodes = f", {topo.nodes} nodes" if topo.nodes > 1 else ""
    return f"{topo.ranks_per_chip} ranks per chip, {X}×{Y} chips, {topo.instances} instances{nodes}"


def place(layout: ParallelLayout, topo: Topology) -> np.ndarray:
    """Rank ids arranged as a `(pp, dp, fsdp, tp)` array: entry [p, d, f, t] is the rank that holds
    pipeline stage p, data replica d, fsdp shard f and tensor shard t."""
    if layout.size != topo.num_ranks:
        raise ConfigError(f"{marked('parallel')} {layout}: {layout.size} ranks but {topo.name} has {topo.num_ranks}")
    X, Y = topo.torus
    remaining = [["core", topo.ranks_per_chip], ["x", X], ["y", Y], ["instance", topo.instances],
                 ["node", topo.nodes]]
    # Segments keyed by physical position; a digit split between two axes yields two segments,
    # the one taken from the fast end being the lower sub-digit.
    low: list[tuple[int, Segment]] = []
    high: list[tuple[int, Segment]] = []
    low += _take(remaining, layout.tp, "tp", False, layout, topo)
    high += _take(remaining, layout.pp, "pp", True, layout, topo)
    low += _take(remaining, layout.fsdp, "fsdp", False, layout, topo)
    low += _take(remaining, layout.dp, "dp", False, layout, topo)
    # Physical order, fastest first: within a digit, fast-end takes (in take order) come below
    # whatever was taken from the slow end.
    by_dim: dict[int, list[Segment]] = {}
    for i, s in low:
        by_dim.setdefault(i, []).append(s)
    for i, s in high:
        by_dim.setdefault(i, []).append(s)
    segments = [s for i in sorted(by_dim) for s in by_dim[i]]
    # `ranks` has one array dimension per segment, slowest first, so C order enumerates ranks.
    ranks = np.arange(topo.num_ranks).reshape([s.size for s in reversed(segments)])
    seg_axes = [s.axis for s in reversed(segments)]
    perm = [d for axis in AXES for d, a in enumerate(seg_axes) if a == axis]
    shape = [getattr(layout, a) for a in AXES]
    return ranks.transpose(perm).reshape(shape)


def axis_groups(placement: np.ndarray, axis: str | tuple[str, ...]) -> np.ndarray:
    """`[num_groups, group_size]`: the ranks that communicate along `axis` — or along several axes
    together, e.g. ("dp", "fsdp") — in axis order."""
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    dims = [AXES.index(a) for a in axes]
    moved = np.moveaxis(placement, dims, list(range(placement.ndim - len(dims), placement.ndim)))
    size = 1
    for d in dims:
        size *= placement.shape[d]
    return moved.reshape(-1, size)


# ---------------------------------------------------------------------------------------------
# What the placement means on the hardware


@dataclasses.dataclass(frozen=True)
class AxisLinks:
    axis: str
    size: int
    example: tuple[int, ...]          # one group's ranks
    classes: dict[str, int]           # link class → count of ring steps (over all groups)
    max_hops: int

    @property
    def slowest(self) -> str | None:
        present = [c for c in LINK_CLASSES if c in self.classes]
        return present[-1] if present else None


def axis_links(layout: ParallelLayout, topo: Topology, placement: np.ndarray) -> list[AxisLinks]:
    """For each axis of size > 1: the link classes its ring-ordered collectives cross."""
    out = []
    for axis in AXES:
        n = getattr(layout, axis)
        if n == 1:
            continue
        groups = axis_groups(placement, axis)
        classes: Counter = Counter()
        max_hops = 0
        for g in groups:
            # A ring of n ranks has n steps; a pair has just one link.
            pairs = zip(g, np.roll(g, -1)) if n > 2 else [(g[0], g[1])]
            for a, b in pairs:
                link = topo.link(int(a), int(b))
                classes[link.cls.name] += 1
                max_hops = max(max_hops, link.hops)
        out.append(AxisLinks(axis, n, tuple(int(r) for r in groups[0]), dict(classes), max_hops))
    return out


def tp_ring_warnings(layout: ParallelLayout, topo: Topology, placement: np.ndarray) -> list[str]:
    """Warn when tensor-parallel groups are not rings of directly linked chips.

    Neuron runs collectives over rings of physically connected cores (neuronx-distributed: on a trn2
    instance tp=16 over a torus row works, tp=8 — two chips, a line not a ring — does not). A group
    inside one chip is fine; otherwise its chips, in tp order, must be ≥ 3 distinct chips each
    directly linked to the next, the last back to the first.
    """
    if layout.tp == 1:
        return []
    for g in axis_groups(placement, "tp"):
        chips = []
        for r in g:
            c = topo.chip_of(int(r))
            if not chips or chips[-1] != c:
                chips.append(c)
        if len(chips) > 1 and chips[0] == chips[-1]:
            chips.pop()
        if len(chips) == 1:
            continue
        reason = None
        if len(set(chips)) != len(chips):
            reason = "it visits a chip twice"
        elif len(chips) == 2:
            reason = "two chips form a line, not a ring"
        else:
            rank_on: dict = {}
            for r in g:
                rank_on.setdefault(topo.chip_of(int(r)), int(r))
            for a, b in zip(chips, chips[1:] + chips[:1]):
                if not topo.link(rank_on[a], rank_on[b]).direct:
                    reason = f"chips {_chip_text(a)} and {_chip_text(b)} are not directly linked"
                    break
        if reason:
            return [f"warning: tp={layout.tp} groups are not rings of direct links on {topo.name} "
                    f"(group {_ranks_text(g)}: {reason}); Neuron requires tensor-parallel groups to be "
                    f"rings on the torus, so this layout may not run on real hardware"]
    return []


def pp_ring_warnings(layout: ParallelLayout, topo: Topology, placement: np.ndarray) -> list[str]:
    """Stage-to-stage sends are collective-permutes p → p+1 around the pp ring; Neuron runs
    permutes only as rings over physically connected ranks, so every step must be a direct link."""
    if layout.pp == 1:
        return []
    for g in axis_groups(placement, "pp"):
        pairs = zip(g, np.roll(g, -1)) if len(g) > 2 else [(g[0], g[1])]
        for a, b in pairs:
            link = topo.link(int(a), int(b))
            if not link.direct:
                return [f"warning: pp={layout.pp} stage-to-stage sends are not rings of direct links on "
                        f"{topo.name} (ranks {int(a)} → {int(b)}: {link.hops} hops over {link.cls.name}); "
                        f"Neuron runs collective-permutes only over rings of connected ranks"]
    return []


def layout_warnings(layout: ParallelLayout, topo: Topology, placement: np.ndarray) -> list[str]:
    """Everything about a placement that real hardware may refuse (tp rings, pp rings)."""
    return tp_ring_warnings(layout, topo, placement) + pp_ring_warnings(layout, topo, placement)


def _chip_text(c) -> str:
    inst, x, y = c
    return f"(i{inst},x{x},y{y})"


def _ranks_text(g) -> str:
    g = [int(r) for r in g]
    if g == list(range(g[0], g[0] + len(g))):
        return f"ranks {g[0]}–{g[-1]}"
    return "ranks " + ",".join(str(r) for r in g[:12]) + ("…" if len(g) > 12 else "")


def describe_links(al: AxisLinks) -> str:
    classes = ", ".join(f"{c} ×{al.classes[c]}" for c in LINK_CLASSES if c in al.classes)
    return f"{al.axis}={al.size}: crosses {al.slowest} (ring steps: {classes}; max {al.max_hops} hops)"


def admissible_layouts(topo: Topology, cfg: ModelConfig, batch: int, *, schedule: str = "1f1b",
                       microbatches: int | None = 1, virtual_stages: int = 1, axes=AXES) -> list[ParallelLayout]:
    """Every factorisation of the mesh's rank count over `axes` that the model, the batch, the
    pipeline settings and the placement accept, in a fixed order (most data-parallel first).
    `microbatches=None` gives each layout `matrix_microbatches(layout)`."""
    ok = []
    for layout in factorisations(topo.num_ranks, axes):
        try:
            m = matrix_microbatches(layout) if microbatches is None else microbatches
            validate(layout, cfg, RunConfig(batch=batch, schedule=schedule, microbatches=m,
                                            virtual_stages=virtual_stages))
            place(layout, topo)
        except ConfigError:
            continue
        ok.append(layout)
    return sorted(ok, key=lambda l: (-l.dp, -l.fsdp, l.tp, l.pp))
