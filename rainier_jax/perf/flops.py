"""Analytic FLOPs of a train step, from model dimensions alone (no JAX).

Two counts, as the MFU convention needs:

* **model FLOPs** — what the model needs, whatever the implementation: 3 × the forward matmuls
  (forward, and the two gradients of every matmul in the backward), attention included, nothing
  recomputed. The forward matmuls per token are 2·(matmul parameters) plus 4·T·H·K per layer for
  attention (scores and weighted values over the full T×T square, as PaLM's MFU formula counts
  them). The embedding lookup is a gather, not a matmul.
* **hardware FLOPs** — what rainier's program executes: model FLOPs plus the forward recomputed by
  activation rematerialisation (`model.llama.run_layers`):
  - `full`: the block's forward minus its last matmul (the down projection): its output feeds
    only the residual sum, which the backward does not need, and XLA drops it;
  - `selective`: the attention scores QKᵀ (the weighted values PV are kept);
  - `none`: nothing.
  `tests/test_hlo.py` checks each count against the dots of the compiled step exactly.
"""

from __future__ import annotations

import dataclasses

from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.run import REMAT


@dataclasses.dataclass(frozen=True)
class LayerDots:
    """Forward matmul FLOPs of one block per token, by matmul."""
    qkv: float
    attention: float    # scores (QKᵀ) and weighted values (PV)
    out: float          # attention output projection
    mlp_in: float       # gate and up projections (llama), the up projection (gpt2)
    down: float

    @property
    def total(self) -> float:
        return self.qkv + self.attention + self.out + self.mlp_in + self.down


def layer_dots(cfg: ModelConfig, seq: int) -> LayerDots:
    D, H, G, K, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
    mlp_in = (2 if cfg.arch == "llama" else 1) * 2.0 * D * F
    return LayerDots(qkv=2.0 * D * (H + 2 * G) * K, attention=4.0 * seq * H * K, out=2.0 * H * K * D,
                     mlp_in=mlp_in, down=2.0 * F * D)


def head_dots(cfg: ModelConfig) -> float:
    return 2.0 * cfg.d_model * cfg.vocab_size


def model_flops(cfg: ModelConfig, *, batch: int, seq: int) -> float:
    """Model FLOPs of one step of `batch` sequences of `seq` tokens (module docstring)."""
    forward = cfg.n_layers * layer_dots(cfg, seq).total + head_dots(cfg)
    return 3.0 * forward * batch * seq


def hardware_flops(cfg: ModelConfig, *, batch: int, seq: int, remat: str = "full") -> float:
    """Matmul FLOPs the step executes, recompute included."""
    if remat not in REMAT:
        raise ValueError(f"remat {remat!r}: one of {', '.join(REMAT)}")
    dots = layer_dots(cfg, seq)
    per_layer = {"full": dots.total - dots.down, "selective": dots.attention / 2, "none": 0.0}[remat]
    recompute = cfg.n_layers * per_layer * batch * seq
    return model_flops(cfg, batch=batch, seq=seq) + recompute
