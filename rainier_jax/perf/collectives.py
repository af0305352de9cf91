"""Price a collective on the topology: which link class a group crosses, and how long it takes.

A group is a list of ranks in axis order. Its **link class** is the slowest class between
ring-consecutive members (a group spanning instances or nodes is priced at `ring` or `efa`, never
at NeuronLink's torus rate). Its **bandwidth per rank** is one direction of that class
(`gbps`, halved when the mesh file gives both directions added), shared by the ranks of one chip
that use the same links at the same time (one per group with a member on that chip), times the
generation's link efficiency.

Times, for n members, S bytes (the full buffer: the all-reduce operand, the all-gather result,
the reduce-scatter input), α the class latency and B the bandwidth per rank:

    ring          all-reduce 2(n−1)(α + S/(n·R·B));  all-gather, reduce-scatter (n−1)(α + S/(n·R·B)),
                  R the ring's bandwidth multiplier: a ring of ≥ 2 chips runs both directions (half the
                  buffer each way: ×2), and a group whose chips make up a whole X×Y torus (X, Y ≥ 3)
                  runs two edge-disjoint Hamiltonian cycles ("KangaRing" in the Neuron runtime documentation: ×2 more),
                  so every link direction of a chip carries traffic; a group inside one chip, or one
                  crossing EFA (a node's sends to both neighbours leave through the same NICs): R = 1
    rdh           recursive halving/doubling (n a power of two): log2 n steps; step k talks to the
                  member 2^k away in group order and sends S/2^(k+1) (twice for all-reduce), paying
                  α and the bandwidth once per chip-to-chip hop to that partner (its route shares
                  the links with as many other flows)
    mesh          every member sends to every other at once: α·(most hops) + (n−1)/n·S·(mean hops)/B
                  per phase (two for all-reduce)
    hierarchical  groups spanning instances or nodes with several members in each: reduce-scatter
                  inside, all-reduce of S/n_in across, all-gather inside
    permute       point to point: α·hops + S/B

The cheapest applicable algorithm is taken, as the Neuron runtime picks by size (mesh for small
messages, RDH in between, ring for large: the Neuron runtime documentation). No JAX here.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from rainier_jax.hardware.topology import LINK_CLASSES, LinkClass, Topology

# The collectives the performance model prices and reads from compiled programs, named as XLA's
# HLO opcodes name them.
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Priced:
    kind: str
    group_size: int
    nbytes: int
    link: str          # the slowest link class the group crosses
    algorithm: str
    seconds: float


def group_link(topo: Topology, group: list[int]) -> LinkClass:
    """The slowest link class between ring-consecutive members of `group`."""
    n = len(group)
    pairs = [(group[i], group[(i + 1) % n]) for i in range(n if n > 2 else 1)]
    classes = [topo.link(a, b).cls for a, b in pairs if a != b]
    if not classes:
        raise ValueError(f"group {group}: needs two distinct ranks")
    return max(classes, key=lambda c: LINK_CLASSES.index(c.name))


def _hops(topo: Topology, a: int, b: int) -> int:
    return max(topo.link(a, b).hops, 1)


def bandwidth(topo: Topology, cls: LinkClass, sharers: int, efficiency: float = 1.0) -> float:
    """Bytes/s one rank gets in one direction of `cls` when `sharers` ranks of its chip use it."""
    one_way = cls.bytes_per_s if cls.per_direction else cls.bytes_per_s / 2
    return one_way * efficiency / max(sharers, 1)


def sharers(topo: Topology, groups: list[list[int]], group: list[int]) -> int:
    """Groups (running at the same time) with a member on the chip of `group[0]`."""
    chip = topo.chip_of(group[0]) + (topo.coord(group[0]).node,)
    return sum(1 for g in groups if any(topo.chip_of(r) + (topo.coord(r).node,) == chip for r in g))


def ring_paths(topo: Topology, group: list[int]) -> int:
    """R of the ring formula (module docstring): the parallel link directions a ring uses."""
    chips = {topo.chip_of(r) + (topo.coord(r).node,) for r in group}
    if len(chips) < 2:
        return 1
    X, Y = topo.torus
    per_instance: dict = {}
    for inst, x, y, node in chips:
        per_instance.setdefault((node, inst), set()).add((x, y))
    whole = X >= 3 and Y >= 3 and all(len(c) == X * Y for c in per_instance.values())
    return 2 * (2 if whole else 1)


def _ring(kind: str, n: int, S: float, a: float, B: float) -> float:
    steps = 2 * (n - 1) if kind == "all-reduce" else n - 1
    return steps * (a + S / (n * B))


def _rdh_hops(topo: Topology, group: tuple[int, ...]) -> tuple[int, ...] | None:
    """Chip-to-chip hops to the partner of each recursive halving/doubling step (n a power of 2)."""
    n = len(group)
    if n & (n - 1):
        return None
    return tuple(max(_hops(topo, group[i], group[i ^ (1 << k)]) for i in range(n)) for k in range(int(math.log2(n))))


def _rdh(kind: str, hops: tuple[int, ...], S: float, a: float, B: float) -> float:
    t = sum(h * (a + (S / 2 ** (k + 1)) / B) for k, h in enumerate(hops))
    return 2 * t if kind == "all-reduce" else t


def _mesh(kind: str, n: int, max_hops: int, mean_hops: float, S: float, a: float, B: float) -> float:
    phase = a * max_hops + (n - 1) / n * S * mean_hops / B
    return 2 * phase if kind == "all-reduce" else phase


def _domains(topo: Topology, group) -> list[list[int]]:
    """The group's members per instance (or per node, when it spans nodes), in group order."""
    key = (lambda r: topo.coord(r).node) if len({topo.coord(r).node for r in group}) > 1 \
        else (lambda r: topo.coord(r).instance)
    out: dict[int, list[int]] = {}
    for r in group:
        out.setdefault(key(r), []).append(r)
    return list(out.values())


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Everything about a group on the topology that the formulas need, computed once per group
    (the planner prices thousands of collectives over the same few hundred groups)."""
    n: int
    cls: LinkClass
    bandwidth: float               # per rank, efficiency 1, sharers accounted
    paths: int                     # R of the ring formula
    permute_hops: int
    rdh_hops: tuple[int, ...] | None
    mesh_max_hops: int
    mesh_mean_hops: float
    inner: "_Geometry | None"      # hierarchical: within an instance (or node) …
    outer: "_Geometry | None"      # … and across them


@functools.lru_cache(maxsize=8192)
def _geometry(topo: Topology, group: tuple[int, ...], groups: tuple[tuple[int, ...], ...]) -> _Geometry:
    cls = group_link(topo, list(group))
    n = len(group)
    hops = [_hops(topo, group[0], r) for r in group[1:]]
    inner = outer = None
    domains = _domains(topo, group)
    if len(domains) > 1 and len({len(d) for d in domains}) == 1 and len(domains[0]) > 1:
        split = [_domains(topo, g) for g in groups]
        inner = _geometry(topo, tuple(domains[0]), tuple(tuple(d) for ds in split for d in ds))
        outer = _geometry(topo, tuple(d[0] for d in domains),
                          tuple(tuple(d[i] for d in ds) for ds in split for i in range(len(domains[0]))))
    return _Geometry(
        n=n, cls=cls, bandwidth=bandwidth(topo, cls, sharers(topo, [list(g) for g in groups], list(group))),
        paths=1 if cls.name == "efa" else ring_paths(topo, list(group)),
        permute_hops=max(_hops(topo, group[i], group[(i + 1) % n]) for i in range(n)),
        rdh_hops=_rdh_hops(topo, group), mesh_max_hops=max(hops), mesh_mean_hops=sum(hops) / len(hops),
        inner=inner, outer=outer)


def _options(g: _Geometry, kind: str, S: float, efficiency: float) -> dict[str, float]:
    """Seconds of each applicable algorithm."""
    B, a = g.bandwidth * efficiency, g.cls.latency_s
    if kind == "collective-permute":
        return {"permute": g.permute_hops * a + S / B}
    if kind == "all-to-all":
        return {"mesh": _mesh("all-gather", g.n, g.mesh_max_hops, g.mesh_mean_hops, S, a, B)}
    options = {"ring": _ring(kind, g.n, S, a, B * g.paths),
               "mesh": _mesh(kind, g.n, g.mesh_max_hops, g.mesh_mean_hops, S, a, B)}
    if g.rdh_hops is not None:
        options["rdh"] = _rdh(kind, g.rdh_hops, S, a, B)
    if g.inner is not None:
        fast = min(_options(g.inner, "all-gather" if kind == "all-gather" else "reduce-scatter", S,
                            efficiency).values())
        across = min(_options(g.outer, kind, S / g.inner.n, efficiency).values())
        options["hierarchical"] = fast + across + (fast if kind == "all-reduce" else 0.0)
    return options


def price(topo: Topology, kind: str, nbytes: float, group: list[int], *, groups: list[list[int]] | None = None,
          efficiency: float = 1.0) -> Priced:
    """The time of one collective of `kind` over `group` moving `nbytes` (module docstring);
    `groups` are all the groups running it at once (default: just this one)."""
    if kind not in KINDS:
        raise ValueError(f"collective {kind!r}: one of {', '.join(KINDS)}")
    group = tuple(int(r) for r in group)
    if len(set(group)) < 2:
        raise ValueError(f"group {list(group)}: needs two distinct ranks")
    groups = tuple(tuple(int(r) for r in g) for g in groups) if groups else (group,)
    g = _geometry(topo, group, groups)
    options = _options(g, kind, float(nbytes), efficiency)
    algorithm = min(options, key=options.get)
    return Priced(kind, g.n, int(nbytes), g.cls.name, algorithm, options[algorithm])


def bytes_by(items, *, above: int = 0, axes=None) -> dict[tuple, int]:
    """(kind, axes) → bytes per rank per step (Σ runs · nbytes) of collectives that each give their
    `kind`, `axes`, `runs` and `nbytes`: the analytic model's (`traffic.Comm`) or the compiled
    step's (`compiled.AxisCollective`). Collectives of `above` bytes or fewer are left out;
    `axes(c)`, when given, stands for a collective's axes in the key."""
    out: dict[tuple, int] = {}
    for c in items:
        if c.nbytes > above:
            key = (c.kind, tuple(c.axes) if axes is None else axes(c))
            out[key] = out.get(key, 0) + c.runs * c.nbytes
    return out
