"""`rj.emulate()`: an emulated Trainium2 mesh for a user's own JAX and Flax code.

It does what `rainier train` does before its first step, for code rainier does not own: settle the
mesh and the layout (rainier_jax/api/settings.py), place the layout on the topology exactly as
`rainier train` places it, start JAX with one CPU device per rank — or join the other processes
of a `rainier run --processes N` — and build the JAX mesh on those devices. The `Emulation` it
returns carries the mesh, the logical-axis rules and helpers to move data onto the mesh; `with
em:` makes it the mesh and the rules that Flax NNX models created inside it are sharded by.

JAX is imported only when `emulate` runs: the device count can only be set before JAX's backend
starts, so this module must not start it by being imported.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from rainier_jax.api import settings
from rainier_jax.api.errors import EmulationError
from rainier_jax.config.errors import ConfigError
from rainier_jax.dist import cluster as cluster_lib
from rainier_jax.dist import startup
from rainier_jax.parallel.axis_rules import ACTIVATION_RULES, param_rules
from rainier_jax.parallel.experiment import mesh_of
from rainier_jax.parallel.placement_view import render_mesh

if TYPE_CHECKING:
    import jax
    from jax.sharding import Mesh, NamedSharding

    from rainier_jax.dist.cluster import Cluster
    from rainier_jax.hardware.topology import Topology
    from rainier_jax.parallel.layout import ParallelLayout


class Emulation:
    """An emulated mesh with JAX running on it; made by `emulate()`.

    - `mesh`: a `jax.sharding.Mesh` with Auto axes `("pp", "dp", "fsdp", "tp")` (size-1 axes
      included), device r at the position of rank r as `rainier train` places it.
    - `rules`: the parameter rules, `(logical name, mesh axis or None)` pairs as
      `flax.nnx.logical_axis_rules` takes them; `activation_rules` likewise for activations and
      data (the batch split over dp and fsdp).
    - `topology`, `layout`, `placement`, `cluster`: what was emulated, and which process this is.

    `check(model)` refuses a model the layout cannot split. `with em:` (which may be nested) enters `jax.set_mesh(em.mesh)` and
    `flax.nnx.logical_axis_rules(em.rules)`, so a model and an `nnx.Optimizer` created inside it
    get sharded variables."""

    def __init__(self, topology: Topology, layout: ParallelLayout, placement: np.ndarray, cluster: Cluster):
        self.topology, self.layout, self.placement, self.cluster = topology, layout, placement, cluster
        self.mesh: Mesh = mesh_of(layout, placement)
        self.rules = tuple(param_rules(layout, None).items())
        self.activation_rules = tuple(ACTIVATION_RULES.items())
        self._open: list[contextlib.ExitStack] = []   # one per `with em:` block entered and not left

    def sharding(self, *logical_axes: str | None) -> NamedSharding:
        """The sharding of an array whose dimensions have these logical names (None: kept whole)
        under the activation rules, e.g. `em.sharding("batch", None)` for a token batch."""
        from jax.sharding import NamedSharding

        from rainier_jax.parallel.sharding import spec
        unknown = [a for a in logical_axes if a is not None and a not in ACTIVATION_RULES]
        if unknown:
            raise ValueError(f"no sharding rule for logical axis {unknown[0]!r} (the names are "
                             f"{', '.join(ACTIVATION_RULES)}; None keeps a dimension whole)")
        return NamedSharding(self.mesh, spec(tuple(logical_axes), ACTIVATION_RULES))

    def put(self, host_array, *logical_axes: str | None) -> jax.Array:
        """A global array on the mesh from a host array, sharded as `sharding(*logical_axes)`. Every
        process holds the whole host array (data that is a pure function of a seed and a step is);
        each fills only its own devices' shards."""
        from rainier_jax.dist.arrays import to_devices
        host = np.asarray(host_array)
        if len(logical_axes) > host.ndim:
            raise ValueError(f"put: {len(logical_axes)} logical axes for an array of {host.ndim} dimensions "
                             f"(shape {host.shape})")
        return to_devices(host, self.sharding(*logical_axes))

    def get(self, tree):
        """Host (numpy) copies of arrays on the mesh, however they are split, in one process or
        several. With several processes this is a collective: every process calls it, in the
        same order."""
        from rainier_jax.dist.arrays import host_copy
        return host_copy(tree)

    def check(self, model) -> None:
        """Refuse a Flax NNX model this layout cannot split, before anything is allocated: a
        parameter dimension whose mesh axes do not divide it (kv heads that tp does not divide,
        say), a logical name the rules do not know, a tensor split over one mesh axis twice.
        `model` is a module (abstract or not) or a function that builds one, which is then built
        abstractly: `em.check(lambda: MyModel(rngs=nnx.Rngs(0)))`. Raises EmulationError naming
        the parameter and the fix."""
        from flax import nnx

        from rainier_jax.model.nnx_loader import read_params
        from rainier_jax.parallel.axis_rules import validate_split

        if not isinstance(model, nnx.Module):
            with nnx.use_eager_sharding(False):   # shapes and names only: no mesh, no arrays
                model = nnx.eval_shape(model)
        name = type(model).__name__
        try:
            shapes, axes = read_params(model, f"model {name}")
            validate_split(self.layout, _Tree(name, shapes, axes))
        except ConfigError as e:
            raise EmulationError(str(e)) from None

    def describe(self) -> str:
        """The mesh and where the layout's axes land on it, as `rainier mesh show` prints it."""
        return render_mesh(self.topology, self.layout, self.placement)

    def __enter__(self) -> Emulation:
        import jax
        from flax import nnx
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nnx.logical_axis_rules(self.rules))
        self._open.append(stack)
        return self

    def __exit__(self, *exc) -> None:
        self._open.pop().__exit__(*exc)

    def __repr__(self) -> str:
        processes = f", {self.cluster.num_processes} processes" if self.cluster.num_processes > 1 else ""
        return (f"Emulation({self.topology.name}: {self.topology.num_ranks} ranks, LNC={self.topology.lnc}, "
                f"layout {self.layout}{processes})")


class _Tree:
    """A module's parameter tree as `validate_split` reads a model spec."""

    def __init__(self, name: str, shapes: dict, axes: dict):
        self.name, self._shapes, self._axes = name, shapes, axes

    def param_shapes(self) -> dict:
        return self._shapes

    def param_axes(self) -> dict:
        return self._axes


def emulate(mesh: str | None = None, parallel: str | None = None, lnc: int | None = None) -> Emulation:
    """Emulate `mesh` (a built-in name such as "trn2-instance", or a mesh file's path) at `lnc`
    (None: the file's default) with the layout `parallel` ("fsdp=16,tp=4"; None: dp over every
    rank), and start JAX on it. Call it before anything else uses JAX.

    Under `rainier run` the command line's settings are taken for the arguments left out, and a
    contradicting argument is an error (rainier_jax/api/settings.py). With several processes
    (`rainier run --processes N`, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID) this process joins the others, each owning whole instances. Calling it
    again on the same number of devices returns an equivalent Emulation.

    Raises EmulationError (a ConfigError, so a ValueError) naming the setting and the fix: a bad
    or contradicting setting, a layout that does not fit the mesh, or JAX already started on a
    different number of devices."""
    settled = settings.settle(mesh, parallel, lnc)
    topo = settled.topology
    try:
        cluster = cluster_lib.from_env()
        cluster_lib.check_topology(cluster, topo)
    except ConfigError as e:
        raise EmulationError(str(e)) from None
    running = startup.running_devices()
    if running is not None and running != topo.num_ranks:
        raise EmulationError(f"mesh {topo.name} needs {topo.num_ranks} CPU devices but JAX has already started "
                             f"with {running}: call rj.emulate() before anything else uses JAX (jax.devices(), "
                             "creating an array, …), in a fresh process")
    try:
        startup.start_jax(topo.num_ranks, cluster, topo)
    except ConfigError as e:
        raise EmulationError(str(e)) from None
    return Emulation(topo, settled.layout, settled.placement, cluster)
