"""Which mesh axis splits which logical dimension: the rule tables, without JAX.

`parallel/sharding.py` turns them into PartitionSpecs for the programs; the performance model reads them to
count the bytes each rank holds, so both always agree on the layout.
"""

from __future__ import annotations

import math

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.spec.model import ModelConfig, leaves_with_paths

Rules = dict[str, str | tuple[str, ...] | None]


def param_rules(layout: ParallelLayout, cfg: ModelConfig | None = None) -> Rules:
    """Megatron-style tensor parallelism (column-parallel q/k/v/gate/up, row-parallel o/down,
    vocabulary-parallel embedding and head) plus FSDP over the model dimension. `cfg`: the
    built-in model's sizes, whose kv heads may be fewer than tp; any other model (None) has its
    kv heads split over tp, and a tp that does not divide them is refused (layout.validate_shapes)."""
    split_kv = cfg is None or cfg.n_kv_heads % layout.tp == 0
    return {
        "layers": "pp",   # pipeline stages hold contiguous blocks of layers (size-1 axis otherwise)
        "vocab": "tp",
        "embed": "fsdp",
        "heads": "tp",
        # kv heads are split only when tp divides them; when tp exceeds them each rank keeps the
        # (few) kv weights whole and computes the heads its query heads need.
        "kv_heads": "tp" if split_kv else None,
        "head_dim": None,
        "mlp": "tp",
        "norm": None,
    }


def model_rules(layout: ParallelLayout, model) -> Rules:
    """The parameter rules for a model spec (a `ModelConfig`'s sizes decide its kv-head rule)."""
    return param_rules(layout, model if isinstance(model, ModelConfig) else None)


def _names(a) -> tuple[str, ...]:
    return () if a is None else (a,) if isinstance(a, str) else tuple(a)


def validate_split(layout: ParallelLayout, model, setting: str = "parallel") -> None:
    """Every parameter dimension a mesh axis splits is divisible by that axis's size: the check
    any model's tree gets from its logical names (the built-in model's is
    `layout.validate_for_model`, which names the model's sizes instead)."""
    rules, sizes = model_rules(layout, model), layout.axis_sizes()
    shapes = dict(leaves_with_paths(model.param_shapes()))
    for path, axes in leaves_with_paths(model.param_axes()):
        used = [a for name in axes for a in _names(rules.get(name))]
        if twice := sorted({a for a in used if used.count(a) > 1}):
            names = [name for name in axes if twice[0] in _names(rules.get(name))]
            raise ConfigError(f"parameter {path} of {model.name}: logical axes {' and '.join(map(repr, names))} "
                              f"both map to mesh axis {twice[0]!r}, and a tensor can be split over a mesh axis "
                              f"only once; leave one of them unnamed (None)")
        for dim, (n, name) in enumerate(zip(shapes[path], axes)):
            split = [a for a in _names(rules.get(name)) if sizes[a] > 1]
            ways = math.prod(sizes[a] for a in split)
            if n % ways:
                over = "×".join(f"{a}={sizes[a]}" for a in split)
                raise ConfigError(f"{marked(setting)} {layout}: {over} does not divide dimension {dim} ({n}) of "
                                  f"parameter {path} (logical axis {name!r}); choose a layout whose "
                                  f"{'×'.join(split)} divides {n}, or change the model")


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
        return math.prod(sizes[n] for n in _names(a))

    fits = [d for d in range(len(shape)) if shape[d] % (split(axes[d]) * layout.dp) == 0]
    if not fits:
        return tuple(axes)
    d = max(fits, key=lambda i: shape[i] // split(axes[i]))
    return tuple(axes[:d]) + (_names(axes[d]) + ("dp",),) + tuple(axes[d + 1:])
