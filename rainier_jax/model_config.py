"""Model sizes as data: `models/*.toml` → a validated `ModelConfig`, parameter shapes and the
logical name of every parameter dimension. No JAX here: the CLI validates layouts against a model
before JAX starts, and planning code reads shapes without building anything.
"""

from __future__ import annotations

import dataclasses
import math

from rainier_jax.config import ConfigError, from_mapping, read_toml, resolve_named_file


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_dim: int
    head_dim: int = 0  # 0 → d_model // n_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self):
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} = {getattr(self, key)} must be positive")
        if self.head_dim < 0:
            raise ValueError(f"head_dim = {self.head_dim} must be positive (or 0 for d_model/n_heads)")
        if self.head_dim == 0:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                                 "set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim = {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")

    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in _leaves(param_shapes(self)))


def _leaves(tree: dict):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


def load_model(name_or_path: str) -> ModelConfig:
    path = resolve_named_file(name_or_path, "models", "--model")
    try:
        return from_mapping(ModelConfig, read_toml(path), where="")
    except ConfigError as e:  # one prefix style for every file: "<path>: <key>: <problem>"
        raise ConfigError(f"{path}: {str(e).removeprefix(': ')}") from None


def param_shapes(cfg: ModelConfig) -> dict:
    L, D, H, G, K, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                           cfg.mlp_dim, cfg.vocab_size)
    shapes = {
        "embed": (V, D),
        "layers": {
            "attn_norm": (L, D), "wq": (L, D, H, K), "wk": (L, D, G, K), "wv": (L, D, G, K),
            "wo": (L, H, K, D),
            "mlp_norm": (L, D), "w_gate": (L, D, F), "w_up": (L, D, F), "w_down": (L, F, D),
        },
        "final_norm": (D,),
    }
    if not cfg.tie_embeddings:
        shapes["head"] = (D, V)
    return shapes


def param_axes(cfg: ModelConfig) -> dict:
    """Logical name of every parameter dimension (same tree as `param_shapes`)."""
    axes = {
        "embed": ("vocab", "embed"),
        "layers": {
            "attn_norm": ("layers", "norm"),
            "wq": ("layers", "embed", "heads", "head_dim"),
            "wk": ("layers", "embed", "kv_heads", "head_dim"),
            "wv": ("layers", "embed", "kv_heads", "head_dim"),
            "wo": ("layers", "heads", "head_dim", "embed"),
            "mlp_norm": ("layers", "norm"),
            "w_gate": ("layers", "embed", "mlp"),
            "w_up": ("layers", "embed", "mlp"),
            "w_down": ("layers", "mlp", "embed"),
        },
        "final_norm": ("norm",),
    }
    if not cfg.tie_embeddings:
        axes["head"] = ("embed", "vocab")
    return axes
