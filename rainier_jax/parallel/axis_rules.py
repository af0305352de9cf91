"""Which mesh axis splits which logical dimension: the rule tables, without JAX.

`parallel/sharding.py` turns them into PartitionSpecs for the programs; the performance model reads them to
count the bytes each rank holds, so both always agree on the layout.
"""

from __future__ import annotations

import math

from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.spec.model import ModelConfig

Rules = dict[str, str | tuple[str, ...] | None]


def param_rules(layout: ParallelLayout, cfg: ModelConfig) -> Rules:
    """Megatron-style tensor parallelism (column-parallel q/k/v/gate/up, row-parallel o/down,
    vocabulary-parallel embedding and head) plus FSDP over the model dimension."""
    return {
        "layers": "pp",   # pipeline stages hold contiguous blocks of layers (size-1 axis otherwise)
        "vocab": "tp",
        "embed": "fsdp",
        "heads": "tp",
        # kv heads are split only when tp divides them; when tp exceeds them each rank keeps the
        # (few) kv weights whole and computes the heads its query heads need.
        "kv_heads": "tp" if cfg.n_kv_heads % layout.tp == 0 else None,
        "head_dim": None,
        "mlp": "tp",
        "norm": None,
    }


ACTIVATION_RULES: Rules = {
    "batch": ("dp", "fsdp"),
    "seq": None,
    "embed": None,
    "heads": "tp",
    "head_dim": None,
    "mlp": "tp",
    "vocab": "tp",
}


def zero1_axes(shape: tuple[int, ...], axes: tuple, layout: ParallelLayout) -> tuple:
    """ZeRO-1: the mesh axes of an optimizer moment — its parameter's, with `dp` added to the
    largest dimension that can take it (dp dividing what is left of it), so Adam's elementwise
    update runs on 1/dp of each tensor. A tensor no dimension of which divides stays whole over dp.
    `axes` holds, per dimension, None, a mesh axis or a tuple of them."""
    if layout.dp == 1:
        return tuple(axes)
    sizes = layout.axis_sizes()

    def split(a) -> int:
        names = () if a is None else (a,) if isinstance(a, str) else tuple(a)
        return math.prod(sizes[n] for n in names)

    fits = [d for d in range(len(shape)) if shape[d] % (split(axes[d]) * layout.dp) == 0]
    if not fits:
        return tuple(axes)
    d = max(fits, key=lambda i: shape[i] // split(axes[i]))
    names = () if axes[d] is None else (axes[d],) if isinstance(axes[d], str) else tuple(axes[d])
    return tuple(axes[:d]) + (names + ("dp",),) + tuple(axes[d + 1:])
