"""Which mesh axis splits which logical dimension: the rule tables, without JAX.

`sharding.py` turns them into PartitionSpecs for the programs; the performance model reads them to
count the bytes each rank holds, so both always agree on the layout.
"""

from __future__ import annotations

from rainier_jax.layout import ParallelLayout
from rainier_jax.model_config import ModelConfig

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
