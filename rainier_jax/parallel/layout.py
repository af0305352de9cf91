"""Parallel layouts: parse `dp=..,fsdp=..,tp=..,pp=..`, validate it against a model and run settings,
and enumerate the layouts of a rank count. Where each axis lands on the topology is
rainier_jax/parallel/placement.py."""

from __future__ import annotations

import dataclasses
import re

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.run import RunConfig
from rainier_jax.parallel.schedules import SCHEDULES, ScheduleKind, validate as validate_schedule
from rainier_jax.config.values import show

# Mesh axis order, slowest-varying first. Every mesh has all four axes (size 1 when unused), so
# sharding rules never need to ask which axes exist.
AXES = ("pp", "dp", "fsdp", "tp")


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    pp: int = 1

    @property
    def size(self) -> int:
        return self.dp * self.fsdp * self.tp * self.pp

    @property
    def data_size(self) -> int:
        """Ranks that hold different sequences of the batch."""
        return self.dp * self.fsdp

    def axis_sizes(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in AXES}

    def __str__(self) -> str:
        parts = [f"{a}={getattr(self, a)}" for a in AXES if getattr(self, a) > 1]
        return ",".join(parts) or "single"


def parse_layout(text: str | None, num_ranks: int, *, setting: str = "parallel") -> ParallelLayout:
    """`dp=2,tp=4` → ParallelLayout; omitted axes are 1; no text means dp over every rank.
    `setting` names the layout in error messages (`parallel`, `reference`)."""
    if text is None:
        return ParallelLayout(dp=num_ranks)
    sizes: dict[str, int] = {}
    for part in text.split(","):
        # At most 18 digits: any axis size past int64 is refused as unreadable, not converted.
        m = re.fullmatch(r"\s*([a-z]+)\s*=\s*(-?\d{1,18})\s*", part)
        if not m:
            raise ConfigError(f"{marked(setting)} {show(text)}: cannot read {show(part)!r} (expected AXIS=N, e.g. dp=2,tp=4)")
        axis, n = m.group(1), int(m.group(2))
        if axis not in AXES:
            raise ConfigError(f"{marked(setting)} {text}: unknown axis '{axis}' (axes: {', '.join(AXES)})")
        if axis in sizes:
            raise ConfigError(f"{marked(setting)} {text}: axis '{axis}' given twice")
        if n <= 0:
            raise ConfigError(f"{marked(setting)} {text}: {axis}={n} must be a positive integer")
        sizes[axis] = n
    layout = ParallelLayout(**sizes)
    if layout.size != num_ranks:
        raise ConfigError(f"{marked(setting)} {text}: the axis sizes multiply to {layout.size} but the mesh has "
                          f"{num_ranks} ranks; make the product {num_ranks} (e.g. dp={num_ranks})")
    return layout


def validate_for_model(layout: ParallelLayout, cfg: ModelConfig, setting: str = "parallel") -> None:
    """Reject layouts the model's shapes cannot be split by, naming the dimension and the fix."""
    tp, fsdp = layout.tp, layout.fsdp
    for key, n in (("n_heads", cfg.n_heads), ("mlp_dim", cfg.mlp_dim), ("vocab_size", cfg.vocab_size)):
        if n % tp:
            raise ConfigError(f"{marked(setting)} {layout}: tp={tp} does not divide the model's {key} ({n}); "
                              f"choose tp among {_divisors(n)}")
    g = cfg.n_kv_heads
    if g % tp and tp % g:
        raise ConfigError(f"{marked(setting)} {layout}: tp={tp} and the model's n_kv_heads ({g}) must divide "
                          f"one another (kv heads are split when tp divides them, replicated when they "
                          f"divide tp); choose tp among {_divisors(g)} or a multiple of {g}")
    if cfg.d_model % fsdp:
        raise ConfigError(f"{marked(setting)} {layout}: fsdp={fsdp} does not divide the model's d_model "
                          f"({cfg.d_model}); choose fsdp among {_divisors(cfg.d_model)}")


def validate_batch(layout: ParallelLayout, batch: int, setting: str = "parallel", microbatches: int = 1) -> None:
    if batch <= 0:
        raise ConfigError(f"{marked('batch')} {batch}: must be a positive number of sequences")
    if batch % layout.data_size:
        raise ConfigError(f"{marked('batch')} {batch}: not divisible by the data axes dp×fsdp = {layout.data_size} "
                          f"of {marked(setting)} {layout}; use a multiple of {layout.data_size}")
    if batch % (layout.data_size * microbatches):
        n = layout.data_size * microbatches
        raise ConfigError(f"{marked('batch')} {batch}: not divisible by dp×fsdp×microbatches = {n} (each data-parallel "
                          f"replica splits its share into {marked('microbatches')} {microbatches}); use a multiple of {n}")


def validate_all(layout: ParallelLayout, cfg: ModelConfig, run: RunConfig, *, setting: str = "parallel",
                 defaulted: frozenset[str] = frozenset()) -> None:
    """Everything a layout must satisfy with these run settings before it runs: model shapes,
    pipeline settings, batch. `defaulted`: the settings that hold their default (messages say so).
    A model other than the built-in (`cfg` not a ModelConfig) has its shapes checked by its
    logical names instead (parallel/experiment.py)."""
    if isinstance(cfg, ModelConfig):
        validate_for_model(layout, cfg, setting=setting)
    validate_pipeline(layout, cfg, schedule=run.schedule, microbatches=run.microbatches,
                      virtual_stages=run.virtual_stages, defaulted=defaulted)
    validate_batch(layout, run.batch, setting=setting, microbatches=run.microbatches)


def validate_pipeline(layout: ParallelLayout, cfg: ModelConfig, *, schedule: str, microbatches: int,
                      virtual_stages: int, defaulted: frozenset[str] = frozenset()) -> None:
    """Schedule name, microbatch and virtual-stage counts against pp and the model's depth."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"{marked('schedule')} {schedule}: unknown schedule (choose {', '.join(SCHEDULES)})")
    validate_schedule(ScheduleKind(schedule), layout.pp, microbatches, virtual_stages, n_layers=cfg.n_layers,
                      defaulted=defaulted)


def _divisors(n: int) -> str:
    # Only the small ones are worth listing (and scanning to n would take ages for a huge n).
    return ", ".join(str(d) for d in range(1, min(n, 64) + 1) if n % d == 0)


# ---------------------------------------------------------------------------------------------
# Placement


def matrix_microbatches(layout: ParallelLayout) -> int:
    """Microbatches a layout gets when none are asked for: one, or pp for a pipeline (the fewest
    that every schedule accepts)."""
    return layout.pp


def factorisations(n: int, axes=AXES) -> list[ParallelLayout]:
    """Every way of writing n as a product of sizes over `axes` (the others 1)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    found = []

    def extend(sizes: dict[str, int], rest: list[str], left: int):
        if not rest:
            if left == 1:
                found.append(ParallelLayout(**sizes))
            return
        for d in divisors:
            if left % d == 0:
                extend({**sizes, rest[0]: d}, rest[1:], left // d)

    extend({}, list(axes), n)
    return found
