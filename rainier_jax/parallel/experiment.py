"""One resolved experiment: a model, its run settings and a parallel layout placed on a topology,
validated together once.

`resolve()` is the one place that runs the checks every command needs before anything compiles
(the layout against the model's shapes, the pipeline settings, the batch, the precision preset)
and places the layout on the topology. `train`, `parity`, `estimate` and the checkpoint session
take the `Experiment` it returns instead of loose pieces. No JAX at import: `.mesh` imports it
when first asked, after the CLI has started JAX on the right number of devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

from rainier_jax.hardware.topology import Topology
from rainier_jax.parallel.layout import AXES, ParallelLayout, parse_layout
from rainier_jax.parallel.validate import validate
from rainier_jax.parallel.placement import layout_warnings, place
from rainier_jax.parallel.schedules import Schedule, build_schedule
from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.own import OwnModel
from rainier_jax.spec.precision import Policy
from rainier_jax.spec.run import RunConfig

if TYPE_CHECKING:
    from jax.sharding import Mesh


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Built by `resolve()` (or `single_device()`), never by hand: the fields agree with each other."""
    model: ModelConfig | OwnModel   # a model spec (rainier_jax/model/seam.py)
    run: RunConfig
    layout: ParallelLayout
    # None: one device, the parity harness's single-device reference (no topology to place on).
    topology: Topology | None
    # The emulated rank at each position of the mesh, shape `[pp, dp, fsdp, tp]` (`AXES` order);
    # None with no topology.
    placement: np.ndarray | None

    @property
    def policy(self) -> Policy:
        return self.run.policy

    @property
    def pipelined(self) -> bool:
        """True when the step runs through the pipeline executor (pp > 1, or microbatches to
        accumulate over)."""
        return self.layout.pp > 1 or self.run.microbatches > 1

    @functools.cached_property
    def schedule(self) -> Schedule | None:
        """The pipeline schedule table the step runs (None when not pipelined)."""
        if not self.pipelined:
            return None
        return build_schedule(self.run.schedule, self.layout.pp, self.run.microbatches, self.run.virtual_stages)

    @functools.cached_property
    def mesh(self) -> Mesh:
        """The JAX mesh whose entry at each position is the emulated rank placed there (device r
        is rank r), with Auto axes (the decided sharding mode; see docs/DESIGN.md)."""
        return mesh_of(self.layout, self.placement)

    def warnings(self) -> list[str]:
        """Placements that run but cross slower links than they need to (the topology rules)."""
        if self.topology is None:
            return []
        return layout_warnings(self.layout, self.topology, self.placement)

    def with_run(self, run: RunConfig | None = None, **changes) -> Experiment:
        """The same placement with other run settings (`run`, or changes to this one), validated
        again; the placement is kept, not recomputed."""
        run = dataclasses.replace(run or self.run, **changes)
        validate(self.layout, self.model, run)
        return Experiment(self.model, run, self.layout, self.topology, self.placement)


def mesh_of(layout: ParallelLayout, placement: np.ndarray | None) -> Mesh:
    """The JAX mesh of a layout placed on a topology (`placement`, as `place` returns it): device r
    at the position of rank r, axes in `AXES` order, all Auto. With no placement, one device: each
    process's own first one (with several processes, device 0 is not everyone's to use, so every
    process holds its own single-device reference)."""
    import jax
    from jax.sharding import AxisType, Mesh

    if placement is None:
        chosen = np.array(jax.local_devices()[:1])
    else:
        chosen = np.array(jax.devices())[placement]
    return Mesh(chosen.reshape([getattr(layout, a) for a in AXES]), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def resolve(topology: Topology | None, model: ModelConfig, parallel: str | ParallelLayout | None, run: RunConfig,
            *, setting: str = "parallel", precision_setting: str = "precision",
            defaulted: frozenset[str] = frozenset()) -> Experiment:
    """Check a layout (text such as "dp=2,tp=4", a ParallelLayout, or None for dp over every rank)
    against the model, the run settings and the topology, and place it. `setting` names the
    layout in messages ("parallel"; the parity reference is "reference"); `defaulted` lists the
    run settings that hold their default (messages say so); `precision_setting` names the preset
    ("reference_precision" for the parity reference). A ConfigError names what is wrong."""
    if topology is None:
        layout = parallel if isinstance(parallel, ParallelLayout) else parse_layout(parallel, 1, setting=setting)
    elif isinstance(parallel, ParallelLayout):
        layout = parallel
    else:
        layout = parse_layout(parallel, topology.num_ranks, setting=setting)
    validate(layout, model, run, setting=setting, precision_setting=precision_setting, defaulted=defaulted)
    if topology is None:
        if layout.size != 1:
            raise ValueError(f"layout {layout} needs a topology to be placed on")
        return Experiment(model, run, layout, None, None)
    return Experiment(model, run, layout, topology, place(layout, topology))


def single_device(model: ModelConfig, run: RunConfig, *, precision_setting: str = "precision") -> Experiment:
    """One device, no topology: the reference the parity harness compares layouts against."""
    return resolve(None, model, ParallelLayout(), run, precision_setting=precision_setting)
