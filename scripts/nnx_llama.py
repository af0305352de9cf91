"""The built-in tiny Llama (models/tiny.toml) ported to Flax NNX: `--model scripts/nnx_llama.py:tiny_llama`.

The same math as rainier_jax/model/llama.py — RMSNorm in fp32, RoPE rotating the two halves of
each head, grouped-query attention with the kv heads repeated, a SwiGLU MLP, an untied head — and
the same init, written as NNX modules: the layers stacked with `nnx.vmap` under the pipeline
contract of docs/OWN_MODEL.md, every parameter named with the built-in model's logical axes.
`from_builtin` turns the built-in model's parameters into this module's, so the two can be
compared on the same weights (tests/test_nnx_adapter.py). Imports only JAX, Flax and NumPy.

Shapes: B batch, T sequence, D d_model, H query heads, G kv heads, K head dim, F mlp width,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Config:
    """models/tiny.toml's sizes."""
    vocab: int = 256
    d_model: int = 128
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 4
    mlp: int = 512
    rope_theta: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _normal(std: float, names: tuple):
    return nnx.with_partitioning(nnx.initializers.normal(std), names)


def _rms_norm(cfg: Config, rngs: nnx.Rngs) -> nnx.RMSNorm:
    # Flax's RMSNorm takes its statistics in fp32 whatever the activation dtype.
    return nnx.RMSNorm(cfg.d_model, epsilon=cfg.eps, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)))


def rope_tables(seq_len: int, head_dim: int, theta: float):
    inv_freq_K2 = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles_TxK2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_K2[None, :]
    return jnp.cos(angles_TxK2), jnp.sin(angles_TxK2)


def apply_rope(x_BxTxNxK, cos_TxK2, sin_TxK2):
    # Rotate the two halves of each head (the Hugging Face Llama convention).
    x1, x2 = jnp.split(x_BxTxNxK, 2, axis=-1)
    cos, sin = cos_TxK2[None, :, None, :], sin_TxK2[None, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BxTxNxK.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.cfg = cfg
        # Fan-in scaled normal init; the residual output further scaled by 1/sqrt(2L).
        self.wq = nnx.Einsum("btd,dhk->bthk", (D, H, K), rngs=rngs,
                             kernel_init=_normal(1 / math.sqrt(D), ("embed", "heads", "head_dim")))
        self.wk = nnx.Einsum("btd,dgk->btgk", (D, G, K), rngs=rngs,
                             kernel_init=_normal(1 / math.sqrt(D), ("embed", "kv_heads", "head_dim")))
        self.wv = nnx.Einsum("btd,dgk->btgk", (D, G, K), rngs=rngs,
                             kernel_init=_normal(1 / math.sqrt(D), ("embed", "kv_heads", "head_dim")))
        self.wo = nnx.Einsum("bthk,hkd->btd", (H, K, D), rngs=rngs,
                             kernel_init=_normal(1 / math.sqrt(H * K) / math.sqrt(2 * cfg.n_layers),
                                                 ("heads", "head_dim", "embed")))

    def __call__(self, x_BxTxD):
        cfg = self.cfg
        T = x_BxTxD.shape[1]
        rope = rope_tables(T, cfg.head_dim, cfg.rope_theta)
        q_BxTxHxK = apply_rope(self.wq(x_BxTxD), *rope)
        k_BxTxGxK = apply_rope(self.wk(x_BxTxD), *rope)
        v_BxTxGxK = self.wv(x_BxTxD)
        # Grouped-query attention: query head h reads kv head h // (H/G).
        rep = cfg.n_heads // cfg.n_kv_heads
        k_BxTxHxK = jnp.repeat(k_BxTxGxK, rep, axis=2)
        v_BxTxHxK = jnp.repeat(v_BxTxGxK, rep, axis=2)
        # Scores and softmax in fp32: the exponent's range is what bf16 loses first.
        s_BxHxTxT = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK,
                               preferred_element_type=jnp.float32) / math.sqrt(cfg.head_dim)
        causal_TxT = jnp.tril(jnp.ones((T, T), dtype=bool))
        s_BxHxTxT = jnp.where(causal_TxT[None, None], s_BxHxTxT, -jnp.inf)
        p_BxHxTxT = jax.nn.softmax(s_BxHxTxT, axis=-1).astype(v_BxTxHxK.dtype)
        o_BxTxHxK = jnp.einsum("bhts,bshk->bthk", p_BxHxTxT, v_BxTxHxK)
        return self.wo(o_BxTxHxK)


class MLP(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.mlp
        self.w_gate = nnx.Linear(D, F, use_bias=False, rngs=rngs, kernel_init=_normal(1 / math.sqrt(D), ("embed", "mlp")))
        self.w_up = nnx.Linear(D, F, use_bias=False, rngs=rngs, kernel_init=_normal(1 / math.sqrt(D), ("embed", "mlp")))
        self.w_down = nnx.Linear(F, D, use_bias=False, rngs=rngs,
                                 kernel_init=_normal(1 / math.sqrt(F) / math.sqrt(2 * cfg.n_layers), ("mlp", "embed")))

    def __call__(self, x_BxTxD):
        return self.w_down(jax.nn.silu(self.w_gate(x_BxTxD)) * self.w_up(x_BxTxD))


class Block(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.attn_norm = _rms_norm(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = _rms_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BxTxD):
        h_BxTxD = x_BxTxD + self.attn(self.attn_norm(x_BxTxD))
        return h_BxTxD + self.mlp(self.mlp_norm(h_BxTxD))


class Llama(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        D = cfg.d_model
        self.tok_embed = nnx.Embed(cfg.vocab, D, rngs=rngs, embedding_init=_normal(1 / math.sqrt(D), ("vocab", "embed")))

        # The stack: one Block whose parameters carry a leading `layers` axis of n_layers.
        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stack(rngs):
            return Block(cfg, rngs)
        self.blocks = stack(rngs)
        self.final_norm = _rms_norm(cfg, rngs)
        self.lm_head = nnx.Linear(D, cfg.vocab, use_bias=False, rngs=rngs,
                                  kernel_init=_normal(1 / math.sqrt(D), ("embed", "vocab")))

    def embed(self, tokens_BxT):
        return self.tok_embed(tokens_BxT)

    def head(self, x_BxTxD):
        return self.lm_head(self.final_norm(x_BxTxD))

    def __call__(self, tokens_BxT):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x_BxTxD, block):
            return block(x_BxTxD)
        return self.head(run(self.embed(tokens_BxT), self.blocks))


def tiny_llama(rngs: nnx.Rngs) -> Llama:
    """The factory: models/tiny.toml's Llama."""
    return Llama(Config(), rngs)


def from_builtin(params: dict) -> dict:
    """The built-in model's parameters (rainier_jax/model/llama.py's `init_params` tree, untied)
    as this module's pure-dict parameters: the same arrays under this module's names."""
    layers = params["layers"]
    kernel = lambda name: {"kernel": layers[name]}  # noqa: E731
    return {
        "tok_embed": {"embedding": params["embed"]},
        "blocks": {
            "attn_norm": {"scale": layers["attn_norm"]},
            "attn": {name: kernel(name) for name in ("wq", "wk", "wv", "wo")},
            "mlp_norm": {"scale": layers["mlp_norm"]},
            "mlp": {name: kernel(name) for name in ("w_gate", "w_up", "w_down")},
        },
        "final_norm": {"scale": params["final_norm"]},
        "lm_head": {"kernel": params["head"]},
    }


def to_builtin(params: dict) -> dict:
    """The inverse of `from_builtin` (e.g. for this module's gradients)."""
    blocks = params["blocks"]
    return {
        "embed": params["tok_embed"]["embedding"],
        "layers": {"attn_norm": blocks["attn_norm"]["scale"], "mlp_norm": blocks["mlp_norm"]["scale"],
                   **{name: blocks["attn"][name]["kernel"] for name in ("wq", "wk", "wv", "wo")},
                   **{name: blocks["mlp"][name]["kernel"] for name in ("w_gate", "w_up", "w_down")}},
        "final_norm": params["final_norm"]["scale"],
        "head": params["lm_head"]["kernel"],
    }
