"""What each rank holds between steps — weights, gradients and optimizer state — from model
dimensions and a layout, no JAX: the state part of the analytic model's memory (`perf/estimate.py`
is the model). Counted from the same sharding rules the programs use (`parallel/axis_rules.py`),
so the count is what rainier would run. `tests/test_perfmodel.py` checks it against the compiled
train step's argument bytes.
"""

from __future__ import annotations

import math

from rainier_jax.parallel.axis_rules import model_rules, zero1_axes
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.spec.precision import Policy


def _leaves(shapes: dict, axes: dict):
    for key, shape in shapes.items():
        if isinstance(shape, dict):
            yield from _leaves(shape, axes[key])
        else:
            yield shape, axes[key]


def _per_rank(shape: tuple[int, ...], mesh_axes: tuple, sizes: dict[str, int]) -> int:
    split = 1
    for a in mesh_axes:
        for name in () if a is None else (a,) if isinstance(a, str) else a:
            split *= sizes[name]
    return math.prod(shape) // split


def params_per_rank(cfg, layout: ParallelLayout, *, zero1: bool = False) -> int:
    """Parameters one rank holds: each tensor divided by the mesh axes its dimensions are split
    over (a validated layout divides every split dimension exactly). `zero1` counts the optimizer
    moments' share instead (`axis_rules.zero1_axes`). `cfg` is any model spec (a ModelConfig or
    a user's OwnModel: rainier_jax/model/seam.py)."""
    rules = model_rules(layout, cfg)
    sizes = layout.axis_sizes()
    total = 0
    for shape, logical in _leaves(cfg.param_shapes(), cfg.param_axes()):
        mesh_axes = tuple(None if a is None else rules[a] for a in logical)
        if zero1:
            mesh_axes = zero1_axes(shape, mesh_axes, layout)
        total += _per_rank(shape, mesh_axes, sizes)
    return total


def state_bytes_per_rank(cfg, layout: ParallelLayout, policy: Policy, *,
                         zero1: bool = False) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state on one rank. With `zero1` the optimizer
    state is further split over the data-parallel axis (FSDP already splits it with the weights)."""
    per = policy.bytes_per_param()
    n = params_per_rank(cfg, layout)
    optimizer = params_per_rank(cfg, layout, zero1=zero1) * per["optimizer"]
    return {"weights": n * per["weights"], "grads": n * per["grads"], "optimizer": optimizer}
