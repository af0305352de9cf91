"""Logical axis names → mesh PartitionSpecs: one table for parameters, one for activations.

The model names logical axes only (its spec's `param_axes()`, and the `constrain` calls of its forward pass); this is the
single place that decides which mesh axis splits which logical dimension. Parameters and
activations get separate rules because FSDP splits a parameter's `embed` dimension at rest but the
computation needs it whole (GSPMD inserts the all-gather), while the batch is split over both data
axes.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rainier_jax.parallel.axis_rules import ACTIVATION_RULES, Rules, model_rules, param_rules, zero1_axes  # noqa: F401 (re-exported)
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.model.seam import Constrain

def spec(logical: tuple[str | None, ...], rules: Rules) -> P:
    unknown = [a for a in logical if a is not None and a not in rules]
    if unknown:
        raise KeyError(f"no sharding rule for logical axis {unknown[0]!r}")
    return P(*(None if a is None else rules[a] for a in logical))


def param_specs(layout: ParallelLayout, model) -> dict:
    """PartitionSpecs of a model spec's parameters (rainier_jax/model/seam.py)."""
    rules = model_rules(layout, model)
    return jax.tree.map(lambda axes: spec(axes, rules), model.param_axes(),
                        is_leaf=lambda x: isinstance(x, tuple))


def param_shardings(mesh: Mesh, layout: ParallelLayout, model) -> dict:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(layout, model),
                        is_leaf=lambda x: isinstance(x, P))


def zero1_shardings(mesh: Mesh, layout: ParallelLayout, model) -> dict:
    """Shardings of the optimizer moments under ZeRO-1: each parameter's, also split over dp."""
    return jax.tree.map(lambda s, shape: NamedSharding(mesh, P(*zero1_axes(shape, tuple(s), layout))),
                        param_specs(layout, model), model.param_shapes(), is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Token batches `[B, T+1]`: sequences split over both data axes."""
    return NamedSharding(mesh, spec(("batch", None), ACTIVATION_RULES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def make_constrain(mesh: Mesh) -> Constrain:
    """The `constrain` the model calls at block boundaries, bound to `mesh`."""
    def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec(logical, ACTIVATION_RULES)))
    return constrain
