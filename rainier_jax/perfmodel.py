"""The analytic performance model (issue #7), from model dimensions and a layout: no JAX.

So far: what each rank holds between steps — weights, gradients and optimizer state — counted
from the same sharding rules the programs use (`axis_rules.py`), so the count is what rainier
would run. `tests/test_perfmodel.py` checks it against the compiled train step's argument bytes.
"""

from __future__ import annotations

import math

from rainier_jax.axis_rules import param_rules
from rainier_jax.layout import ParallelLayout
from rainier_jax.model_config import ModelConfig, param_axes, param_shapes
from rainier_jax.precision import Policy


def _leaves(shapes: dict, axes: dict):
    for key, shape in shapes.items():
        if isinstance(shape, dict):
            yield from _leaves(shape, axes[key])
        else:
            yield shape, axes[key]


def params_per_rank(cfg: ModelConfig, layout: ParallelLayout) -> int:
    """Parameters one rank holds: each tensor divided by the mesh axes its dimensions are split
    over (a validated layout divides every split dimension exactly)."""
    rules = param_rules(layout, cfg)
    sizes = layout.axis_sizes()
    total = 0
    for shape, logical in _leaves(param_shapes(cfg), param_axes(cfg)):
        split = math.prod(sizes[rules[a]] for a in logical if a is not None and rules[a] is not None)
        total += math.prod(shape) // split
    return total


def state_bytes_per_rank(cfg: ModelConfig, layout: ParallelLayout, policy: Policy, *,
                         zero1: bool = False) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state on one rank. With `zero1` the optimizer
    state is further split over the data-parallel axis (FSDP already splits it with the weights)."""
    n = params_per_rank(cfg, layout)
    per = policy.bytes_per_param()
    optimizer = n * per["optimizer"] // (layout.dp if zero1 else 1)
    return {"weights": n * per["weights"], "grads": n * per["grads"], "optimizer": optimizer}
