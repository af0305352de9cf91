"""The compiled path of the performance model: what rainier's real train step holds and sends.

`profile_step` lowers and compiles the train step for a full-size mesh from abstract shapes (no
array is allocated) on emulated CPU devices, then reads three things from XLA:

* memory — `memory_analysis()` of the compiled executable (argument, output, alias, temp bytes);
* dot FLOPs — `hlo.dot_flops` on the final HLO, which multiplies loop bodies by their trip counts
  (XLA's own `cost_analysis` counts a scanned layer once);
* collectives — from the HLO right after SPMD partitioning, because the CPU backend later upcasts
  bf16 collectives to f32 and never forms reduce-scatter: the final HLO says what a CPU sends,
  the partitioner's output what an accelerator would.

Each collective's device groups are then named by the parallel axes they span (`attribute`), so
the bytes can be set against the links each axis crosses (`layout.place`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import tempfile
from pathlib import Path

import numpy as np

from rainier_jax.perf import collectives as comm
from rainier_jax.perf import hlo
from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.parallel.experiment import Experiment
from rainier_jax.parallel.layout import AXES, ParallelLayout
from rainier_jax.parallel.placement import axis_groups
from rainier_jax.spec.model import ModelConfig, require_trainable
from rainier_jax.hardware.topology import Topology

MAX_DEVICES = 2048   # one process's CPU backend limit (JAX_NOTES)

# The dump that holds the partitioner's output (a `before`/`after` pair per pass run).
_SPMD_PASS = "spmd-partitioning"

@dataclasses.dataclass(frozen=True)
class AxisCollective:
    """One collective of the step, named by the parallel axes its groups span."""
    kind: str                  # all-reduce | all-gather | reduce-scatter | all-to-all | collective-permute
    axes: tuple[str, ...]      # e.g. ("tp",), ("dp", "fsdp"), ("pp",); ("other",) when no axes match
    runs: int                  # executions per step (loop trip counts)
    nbytes: int                # per rank per execution: the full buffer (see `_full_bytes`)
    dtype: str
    group_size: int
    groups: tuple[tuple[int, ...], ...]       # ranks; () for permutes
    pairs: tuple[tuple[int, int], ...]        # (source rank, target rank); permutes only
    name: str                  # the HLO instruction
    # The groups are proper subsets of the `axes` groups (e.g. tp=16 over 8 kv heads: k/v
    # gradients are reduced among the 8 ranks that hold different heads, stride 2 along tp).
    partial: bool = False


@dataclasses.dataclass(frozen=True)
class CompiledProfile:
    compile_seconds: float     # lower + compile of the step only
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    dot_flops: float           # per device, one step
    collectives: tuple[AxisCollective, ...]

    @property
    def hbm_bytes(self) -> int:
        """Bytes one rank holds while the step runs. Donated state is both argument and output
        (alias), so it counts once; `peak_memory_in_bytes` is not a peak on CPU (JAX_NOTES)."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def bytes_by(self) -> dict[tuple[str, tuple[str, ...]], int]:
        """(kind, axes) → bytes per rank per step (Σ runs · nbytes). Partial collectives count
        under the axes that contain them: they use those axes' links."""
        return comm.bytes_by(self.collectives)


# --- checks that need no JAX --------------------------------------------------------------------

def check_ranks(topo: Topology) -> None:
    """Refuse, before JAX starts, a mesh with more ranks than one process can emulate."""
    if topo.num_ranks > MAX_DEVICES:
        raise ConfigError(f"{setting('compiled')}: {topo.num_ranks:,} ranks exceed the {MAX_DEVICES:,} CPU "
                          f"devices one process can hold; drop {setting('compiled')} (the analytic model covers "
                          f"it) or use fewer {setting('nodes')}")


def check_compilable(model: ModelConfig, topo: Topology, layout: ParallelLayout) -> None:
    """Refuse, before JAX starts, what `profile_step` cannot compile. The layout itself is checked
    by the usual validation (`layout.validate_all`, `layout.place`)."""
    del layout  # every validated layout of a compilable mesh compiles
    check_ranks(topo)
    if not isinstance(model, ModelConfig):
        return   # a user's model was built (with JAX) before it got here
    try:
        require_trainable(model)
    except ConfigError as e:
        raise ConfigError(f"{setting('compiled')}: {e.raw}; drop {setting('compiled')} "
                          "(the analytic model covers it)") from None


# --- naming groups by axes ----------------------------------------------------------------------

def _axis_combinations(placement: np.ndarray):
    """Subsets of the axes of size > 1, smallest first (then in AXES order): the first subset whose
    groups match is the name, so a size-1 axis never appears in it."""
    sized = [a for a, n in zip(AXES, placement.shape) if n > 1]
    for k in range(len(sized) + 1):
        yield from itertools.combinations(sized, k)


def attribute(groups, placement: np.ndarray) -> tuple[str, ...]:
    """The axes whose groups are exactly `groups` (sets of ranks; order inside a group and of the
    groups is ignored), e.g. ("tp",) or ("dp", "fsdp"); ("other",) when no combination matches.
    Groups of single ranks (a collective that sends nothing) are named by no axis: ()."""
    wanted = {frozenset(int(r) for r in g) for g in groups}
    for axes in _axis_combinations(placement):
        if {frozenset(row.tolist()) for row in axis_groups(placement, axes)} == wanted:
            return axes
    return ("other",)


def containing_axes(groups, placement: np.ndarray) -> tuple[str, ...]:
    """The smallest combination of axes each of whose groups holds a whole group of `groups`:
    where a collective runs among part of an axis (a sub-axis GSPMD made up, e.g. the kv heads
    when tp exceeds them), the axes whose links it uses."""
    owner = {}
    for axes in _axis_combinations(placement):
        for i, row in enumerate(axis_groups(placement, axes)):
            owner.update((int(r), i) for r in row)
        if all(len({owner[int(r)] for r in g}) == 1 for g in groups):
            return axes
    return ("other",)   # unreachable for ranks of the placement: all axes together hold every rank


def attribute_pairs(pairs, placement: np.ndarray) -> tuple[str, ...]:
    """The axes along which a permute's (source, target) pairs move, e.g. ("pp",) when every pair
    differs only in the pipeline coordinate; ("other",) for no pairs or only self-sends."""
    coord = {int(r): c for c, r in np.ndenumerate(placement)}
    moved = set()
    for src, dst in pairs:
        moved |= {a for a, x, y in zip(AXES, coord[src], coord[dst]) if x != y}
    return tuple(a for a in AXES if a in moved) or ("other",)


def _full_bytes(c: hlo.Collective) -> int:
    """The per-rank buffer a collective's cost is usually quoted for: the reduced array (all-reduce
    operand, reduce-scatter input), the gathered array (all-gather result), what is sent (permute,
    all-to-all operand)."""
    return c.result_bytes if c.kind == "all-gather" else c.operand_bytes


def axis_collectives(module: hlo.Module, ranks: np.ndarray, placement: np.ndarray) -> tuple[AxisCollective, ...]:
    """Every collective of a partitioned module, its groups translated to ranks and named by axes.
    The HLO numbers devices by their position in the program's device assignment (the mesh's
    devices in order); `ranks[i]` is the rank at position i."""
    out = []
    for c in hlo.collectives(module, num_devices=len(ranks)):
        groups = tuple(tuple(int(ranks[i]) for i in g) for g in c.groups)
        pairs = tuple((int(ranks[a]), int(ranks[b])) for a, b in c.pairs)
        partial = False
        if c.kind == "collective-permute":
            axes, size = attribute_pairs(pairs, placement), 2
        else:
            axes, size = attribute(groups, placement), len(groups[0])
            if axes == ("other",):
                axes, partial = containing_axes(groups, placement), True
        out.append(AxisCollective(c.kind, axes, c.runs, _full_bytes(c), c.dtype, size, groups, pairs, c.name,
                                  partial))
    return tuple(out)


# --- compiling ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _without_persistent_cache():
    """A persistent-cache hit skips compilation and with it the HLO dump (the cache key ignores
    dump options), so the cache is switched off around the compile. JAX decides once per process
    whether the cache is in use, so the switch needs a `reset_cache` on both sides; the previous
    setting is restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def _after_spmd_text(dump_dir: Path) -> str:
    dumps = sorted(dump_dir.glob(f"*after_{_SPMD_PASS}*"))
    if not dumps:
        raise RuntimeError(f"XLA wrote no HLO after {_SPMD_PASS} to {dump_dir}: was the compile skipped?")
    return dumps[-1].read_text()


def _require_devices(n: int) -> None:
    import jax
    devices = jax.devices()
    if len(devices) != n or devices[0].platform != "cpu":
        raise ConfigError(f"{setting('compiled')}: the mesh has {n:,} ranks but JAX has {len(devices)} "
                          f"{devices[0].platform} devices; start JAX with jax_num_cpu_devices={n} "
                          "(run in a fresh process)")


def profile_step(experiment: Experiment) -> CompiledProfile:
    """Compile the train step of `experiment` (emulated rank r = CPU device r) and read its
    memory, dot FLOPs and collectives. JAX must already have the topology's rank count of CPU
    devices."""
    from rainier_jax.train.loop import build_program

    topo, placement = experiment.topology, experiment.placement
    check_compilable(experiment.model, topo, experiment.layout)
    _require_devices(topo.num_ranks)
    mesh = experiment.mesh
    with tempfile.TemporaryDirectory(prefix="rainier-hlo-") as tmp, _without_persistent_cache():
        dump = {"xla_dump_to": tmp, "xla_dump_hlo_pass_re": _SPMD_PASS}
        program = build_program(experiment, compiler_options=dump, with_eval=False)
        partitioned = hlo.parse_module(_after_spmd_text(Path(tmp)))
    step = program.step
    mem = step.memory_analysis()
    ranks = np.array([d.id for d in mesh.devices.flat])
    return CompiledProfile(
        compile_seconds=program.compile_seconds,
        argument_bytes=mem.argument_size_in_bytes,
        output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        dot_flops=hlo.dot_flops(hlo.parse_module(step.as_text())),
        collectives=axis_collectives(partitioned, ranks, placement),
    )
