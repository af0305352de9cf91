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
                  runs two edge-disjoint Hamiltonian cycles ("KangaRing", TRAINIUM_FACTS.md: ×2 more),
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
messages, RDH in between, ring for large: TRAINIUM_FACTS.md). No JAX here.
"""

from __future__ import annotations

import dataclasses
import math

from rainier_jax.layout import LINK_ORDER
from rainier_jax.topology import LinkClass, Topology

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
    return max(classes, key=lambda c: LINK_ORDER.index(c.name))


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


def _rdh(kind: str, topo: Topology, group: list[int], S: float, a: float, B: float) -> float | None:
    n = len(group)
    if n & (n - 1):
        return None
    t = 0.0
    for k in range(int(math.log2(n))):
        hops = max(_hops(topo, group[i], group[i ^ (1 << k)]) for i in range(n))
        t += hops * (a + (S / 2 ** (k + 1)) / B)
    return 2 * t if kind == "all-reduce" else t


def _mesh(kind: str, topo: Topology, group: list[int], S: float, a: float, B: float) -> float:
    n = len(group)
    hops = [_hops(topo, group[0], r) for r in group[1:]]
    phase = a * max(hops) + (n - 1) / n * S * (sum(hops) / len(hops)) / B
    return 2 * phase if kind == "all-reduce" else phase


def _domains(topo: Topology, group: list[int]) -> list[list[int]]:
    """The group's members per instance (or per node, when it spans nodes), in group order."""
    key = (lambda r: topo.coord(r).node) if len({topo.coord(r).node for r in group}) > 1 \
        else (lambda r: topo.coord(r).instance)
    out: dict[int, list[int]] = {}
    for r in group:
        out.setdefault(key(r), []).append(r)
    return list(out.values())


def price(topo: Topology, kind: str, nbytes: float, group: list[int], *, groups: list[list[int]] | None = None,
          efficiency: float = 1.0) -> Priced:
    """The time of one collective of `kind` over `group` moving `nbytes` (module docstring);
    `groups` are all the groups running it at once (default: just this one)."""
    if kind not in KINDS:
        raise ValueError(f"collective {kind!r}: one of {', '.join(KINDS)}")
    groups = groups or [group]
    cls = group_link(topo, group)
    B = bandwidth(topo, cls, sharers(topo, groups, group), efficiency)
    a = cls.latency_s
    n, S = len(group), float(nbytes)
    if kind == "collective-permute":
        hops = max(_hops(topo, group[i], group[(i + 1) % n]) for i in range(n))
        return Priced(kind, n, int(nbytes), cls.name, "permute", hops * a + S / B)
    if kind == "all-to-all":
        return Priced(kind, n, int(nbytes), cls.name, "mesh", _mesh("all-gather", topo, group, S, a, B))
    paths = 1 if cls.name == "efa" else ring_paths(topo, group)
    options = {"ring": _ring(kind, n, S, a, B * paths), "mesh": _mesh(kind, topo, group, S, a, B)}
    rdh = _rdh(kind, topo, group, S, a, B)
    if rdh is not None:
        options["rdh"] = rdh
    domains = _domains(topo, group)
    if len(domains) > 1 and len({len(d) for d in domains}) == 1 and len(domains[0]) > 1:
        inner, outer = domains[0], [d[0] for d in domains]
        split = [_domains(topo, g) for g in groups]
        fast = price(topo, "all-gather" if kind == "all-gather" else "reduce-scatter", S, inner,
                     groups=[d for ds in split for d in ds], efficiency=efficiency).seconds
        across = price(topo, kind, S / len(inner), outer, efficiency=efficiency,
                       groups=[[d[i] for d in ds] for ds in split for i in range(len(inner))]).seconds
        options["hierarchical"] = fast + across + (fast if kind == "all-reduce" else 0.0)
    algorithm = min(options, key=options.get)
    return Priced(kind, n, int(nbytes), cls.name, algorithm, options[algorithm])
