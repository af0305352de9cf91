"""Mesh file → `Topology`: rank coordinates, torus neighbours and the link class joining two ranks.

Hardware is data: a mesh file (`meshes/*.toml`) gives the instance count, the X×Y chip torus of one
instance, ranks per chip for each LNC setting, the chip's HBM and peak FLOP/s, and four link
classes. This module turns it into a frozen `Topology` and answers geometry questions; it knows
nothing about JAX (it is imported by planning code and tests that never start a backend).

Rank numbering (Neuron's on trn2, generalised):
    rank = (instance · chips_per_instance + chip) · ranks_per_chip + core,   chip = y · X + x
Instances are joined in a ring ("Z") through the chips with the same (x, y), as in a Trn2
UltraServer; X and Y wrap around (a torus).

Link classes: `on_chip` (ranks of one chip), `torus` (one X/Y link inside an instance), `ring`
(one Z link between instances) and `efa` (between nodes, per chip share). A single mesh file never
routes over `efa`; `with_nodes(topo, N)` joins N copies of the mesh (N instances of
`trn2-instance`, N UltraServers of `trn2-ultraserver`) whose ranks talk over `efa`. Node is the
slowest digit of the rank number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.config.typed import from_mapping, read_toml, resolve_named_file
from rainier_jax.config.values import bounded_int, show, size_product

LINK_CLASSES = ("on_chip", "torus", "ring", "efa")  # fastest to slowest: the order "slowest link" means
# Peak-FLOP/s keys a mesh file may give; a closed set so that a typo ("bfloat16") is an error
# rather than a dtype that silently has no figure.
DTYPES = ("fp8", "bf16", "fp16", "tf32", "fp32")

# The mesh every entry point emulates when none is named: `rainier train`, `parity`, `run` and
# `rj.emulate()` (8 ranks: what this machine runs in seconds).
DEFAULT_MESH = "trn2-mini-8"


# ---- the file schema (private: what the TOML says, before LNC is chosen) ----

def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)  # from_mapping turns this into a ConfigError naming the table


@dataclass(frozen=True)
class _LinkFile:
    gbps: float  # gigaBYTES per second
    latency_us: float
    per_direction: bool

    def __post_init__(self):
        _require(self.gbps > 0, f"gbps = {self.gbps} must be > 0 (GB/s)")
        _require(self.latency_us >= 0, f"latency_us = {self.latency_us} must be >= 0")


@dataclass(frozen=True)
class _LinksFile:
    on_chip: _LinkFile
    torus: _LinkFile
    ring: _LinkFile
    efa: _LinkFile


@dataclass(frozen=True)
class _ChipFile:
    generation: str
    hbm_gib: float
    hbm_gbps: float
    peak_tflops: dict[str, float]

    def __post_init__(self):
        _require(self.hbm_gib > 0, f"hbm_gib = {self.hbm_gib} must be > 0")
        _require(self.hbm_gbps > 0, f"hbm_gbps = {self.hbm_gbps} must be > 0")
        for dtype, tflops in self.peak_tflops.items():
            _require(dtype in DTYPES, f"peak_tflops.{dtype}: unknown dtype (use {', '.join(DTYPES)})")
            _require(tflops > 0, f"peak_tflops.{dtype} = {tflops} must be > 0")
        _require("bf16" in self.peak_tflops, "peak_tflops.bf16: missing (add `bf16 = ...`)")


@dataclass(frozen=True)
class _MeshFile:
    name: str
    description: str
    instances: int
    torus: tuple[int, ...]
    default_lnc: int
    ranks_per_chip: dict[str, int]  # TOML table keys are strings; parsed to int LNC below
    chip: _ChipFile
    links: _LinksFile

    def __post_init__(self):
        _require(self.instances > 0, f"instances = {show(self.instances)} must be >= 1")
        _require(len(self.torus) == 2,
                 f"torus = {list(self.torus)}: give [X, Y], the chips per instance in each dimension")
        _require(all(n > 0 for n in self.torus), f"torus = {list(self.torus)}: sizes must be >= 1")
        _require(bool(self.ranks_per_chip), "ranks_per_chip: empty (add e.g. `2 = 4` under it)")
        for key, n in self.ranks_per_chip.items():
            _require(key.isdigit() and 0 < int(key) <= 64,
                     f"ranks_per_chip.{key}: keys are LNC settings (positive integers, e.g. `2 = 4`)")
            _require(n > 0, f"ranks_per_chip.{key} = {show(n)} must be >= 1")
            check_ranks("ranks", {"instances": self.instances, "torus X": self.torus[0], "torus Y": self.torus[1],
                                  f"ranks_per_chip.{key}": n})
        _require(str(self.default_lnc) in self.ranks_per_chip,
                 f"default_lnc = {self.default_lnc} is not listed under [ranks_per_chip] "
                 f"(add `{self.default_lnc} = ...` there or pick a listed LNC)")


# Geometry questions cost time linear in the ranks (estimate on 16,384 ranks takes about 3 s,
# on 262,144 about 35 s, on 4,194,304 over 8 minutes), so a mesh beyond this many ranks — 16,384
# trn2 chips at LNC=2, 64 UltraServers' worth per node count — is refused rather than ground through.
MAX_RANKS = 65_536


def check_ranks(name: str, factors: dict[str, int]) -> int:
    return size_product(name, factors, limit=MAX_RANKS,
                        why="the most ranks rainier models; geometry work grows with every rank")


# ---- the public model ----

@dataclass(frozen=True)
class LinkClass:
    """One kind of link. `gbps` is gigaBYTES/s; `per_direction` says whether that figure is
    available each way at once (True) or is both directions added (False)."""
    name: str
    gbps: float
    latency_us: float
    per_direction: bool

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9

    @property
    def latency_s(self) -> float:
        return self.latency_us * 1e-6


@dataclass(frozen=True)
class Link:
    """How two ranks are joined: the slowest link class on the path and the number of chip-to-chip
    hops (1 for two ranks of one chip; 0 and no class for a rank and itself)."""
    cls: LinkClass | None
    hops: int

    @property
    def direct(self) -> bool:
        return self.hops == 1


@dataclass(frozen=True)
class Coord:
    instance: int
    x: int
    y: int
    core: int  # logical core (rank) index within the chip
    node: int = 0  # copy of the mesh (`with_nodes`), joined to the others by EFA


def _ring_distance(a: int, b: int, size: int) -> int:
    d = abs(a - b) % size
    return min(d, size - d)


def _ring_neighbours(v: int, size: int) -> set[int]:
    # ±1 with wraparound; a dimension of size 2 has one neighbour, of size 1 none.
    return {(v + 1) % size, (v - 1) % size} - {v}


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    generation: str
    instances: int
    torus: tuple[int, int]  # (X, Y) chips per instance
    lnc: int
    ranks_per_chip: int
    lnc_options: dict[int, int]  # every LNC setting the mesh lists → ranks per chip
    hbm_bytes_per_chip: int
    hbm_bytes_per_s: float  # per chip
    peak_flops: dict[str, float]  # dtype → dense FLOP/s per chip
    links: dict[str, LinkClass]
    nodes: int = 1  # copies of the mesh joined by EFA (`with_nodes`)

    def __hash__(self) -> int:  # the dict fields are unhashable; usable as a cache/static key
        return hash((self.name, self.instances, self.torus, self.lnc, self.ranks_per_chip, self.nodes))

    @property
    def chips_per_instance(self) -> int:
        return self.torus[0] * self.torus[1]

    @property
    def num_chips(self) -> int:
        return self.nodes * self.instances * self.chips_per_instance

    @property
    def ranks_per_node(self) -> int:
        return self.instances * self.chips_per_instance * self.ranks_per_chip

    @property
    def num_ranks(self) -> int:
        return self.num_chips * self.ranks_per_chip

    @property
    def hbm_bytes_per_rank(self) -> int:
        return self.hbm_bytes_per_chip // self.ranks_per_chip

    @property
    def peak_flops_per_rank(self) -> dict[str, float]:
        return {k: v / self.ranks_per_chip for k, v in self.peak_flops.items()}

    # -- numbering --

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.num_ranks:
            raise ValueError(f"rank {rank} out of range for {self.name} "
                             f"({self.num_ranks} ranks at LNC={self.lnc})")

    def coord(self, rank: int) -> Coord:
        self._check_rank(rank)
        node, local = divmod(rank, self.ranks_per_node)
        chip_global, core = divmod(local, self.ranks_per_chip)
        instance, chip = divmod(chip_global, self.chips_per_instance)
        y, x = divmod(chip, self.torus[0])
        return Coord(instance, x, y, core, node)

    def rank(self, *args: Any, **kwargs: Any) -> int:
        """`rank(Coord(...))`, `rank(instance, x, y, core)` or `rank(instance=…, x=…, y=…, core=…)`."""
        c = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], Coord) \
            else Coord(*args, **kwargs)
        limits = {"instance": self.instances, "x": self.torus[0], "y": self.torus[1],
                  "core": self.ranks_per_chip, "node": self.nodes}
        for field, size in limits.items():
            v = getattr(c, field)
            if not 0 <= v < size:
                raise ValueError(f"{field} = {v} out of range for {self.name} (0..{size - 1})")
        chip = c.y * self.torus[0] + c.x
        return (c.node * self.ranks_per_node
                + (c.instance * self.chips_per_instance + chip) * self.ranks_per_chip + c.core)

    def chip_of(self, rank: int) -> tuple[int, int, int]:
        c = self.coord(rank)
        return (c.instance, c.x, c.y)

    def chip_ranks(self, instance: int, x: int, y: int) -> list[int]:
        """The ranks of one chip, in core order."""
        first = self.rank(instance, x, y, 0)
        return list(range(first, first + self.ranks_per_chip))

    # -- geometry --

    def chip_neighbours(self, instance: int, x: int, y: int) -> set[tuple[int, int, int]]:
        """Chips one NeuronLink away: ±1 (wrapping) in X and Y, and in the instance ring Z."""
        self.rank(instance, x, y, 0)  # range check
        X, Y = self.torus
        return ({(instance, nx, y) for nx in _ring_neighbours(x, X)}
                | {(instance, x, ny) for ny in _ring_neighbours(y, Y)}
                | {(ni, x, y) for ni in _ring_neighbours(instance, self.instances)})

    def link(self, a: int, b: int) -> Link:
        """The link joining ranks a and b.

        Same rank → no class, 0 hops; same chip → `on_chip`, 1 hop; same instance → `torus`, hops =
        torus distance (with wraparound); different instances → `ring` (the slowest class on such a
        path), hops = ring distance + torus distance. Hops count chip-to-chip links (dimension-
        ordered routing), not the on-chip step to a different core at either end. Ranks of
        different nodes → `efa`, one hop (the network is not modelled hop by hop).
        """
        ca, cb = self.coord(a), self.coord(b)
        if a == b:
            return Link(None, 0)
        if ca.node != cb.node:
            return Link(self.links["efa"], 1)
        torus_hops = (_ring_distance(ca.x, cb.x, self.torus[0])
                      + _ring_distance(ca.y, cb.y, self.torus[1]))
        if ca.instance != cb.instance:
            ring_hops = _ring_distance(ca.instance, cb.instance, self.instances)
            return Link(self.links["ring"], ring_hops + torus_hops)
        if torus_hops == 0:
            return Link(self.links["on_chip"], 1)
        return Link(self.links["torus"], torus_hops)


# ---- loading ----

def _describe_options(options: list[int]) -> str:
    values = [str(n) for n in sorted(options)]
    if len(values) == 1:
        return f"only {marked('lnc')} {values[0]}"
    return f"{marked('lnc')} " + ", ".join(values[:-1]) + " or " + values[-1]


def load_topology(name_or_path: str, lnc: int | None = None, *, setting: str = "mesh") -> Topology:
    """Load a built-in mesh by name (`trn2-instance`) or a mesh TOML by path, at `lnc` (default:
    the mesh's `default_lnc`). Bad input raises `ConfigError` with one line naming key and fix;
    `setting` names the mesh in messages about the name or path itself."""
    path = resolve_named_file(name_or_path, "meshes", setting)
    data = read_toml(path)
    raw_links = data.get("links")
    missing = [c for c in LINK_CLASSES if isinstance(raw_links, dict) and c not in raw_links]
    if missing:  # from_mapping would say "add `efa = ...`"; a table is what is wanted
        raise ConfigError(f"{path}: links.{missing[0]}: missing link class "
                          f"(add a [links.{missing[0]}] table with gbps, latency_us, per_direction)")
    try:
        # where="" gives bare key paths ("chip.hbm_gib"); the file is prefixed once below.
        f = from_mapping(_MeshFile, data, where="")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.raw.removeprefix(': ')}") from None
    options = {int(k): n for k, n in f.ranks_per_chip.items()}
    chosen = f.default_lnc if lnc is None else lnc
    if chosen not in options:
        raise ConfigError(f"{marked('lnc')} {chosen}: {f.name} supports {_describe_options(list(options))}")
    links = {name: LinkClass(name, **dataclasses.asdict(getattr(f.links, name)))
             for name in LINK_CLASSES}
    return Topology(
        name=f.name,
        description=f.description,
        generation=f.chip.generation,
        instances=f.instances,
        torus=(f.torus[0], f.torus[1]),
        lnc=chosen,
        ranks_per_chip=options[chosen],
        lnc_options=options,
        hbm_bytes_per_chip=round(f.chip.hbm_gib * 2**30),
        hbm_bytes_per_s=f.chip.hbm_gbps * 1e9,
        peak_flops={k: v * 1e12 for k, v in f.chip.peak_tflops.items()},
        links=links,
    )


def with_nodes(topo: Topology, nodes: int, *, setting: str = "nodes") -> Topology:
    """`nodes` copies of `topo` joined by its `efa` link class (`setting` names the count in messages)."""
    name = marked(setting)
    bounded_int(name, nodes, want="at least 1")
    check_ranks(name, {name: nodes, f"ranks of {topo.name}": topo.num_ranks})
    if nodes == 1:
        return topo
    return dataclasses.replace(topo, name=f"{topo.name}×{nodes}", nodes=nodes,
                               description=f"{nodes} × {topo.description}, joined by EFA")
