"""A tiny GPT-2-style model in Flax NNX, for `rainier train --model scripts/gpt2_model.py:tiny_gpt2`.

Not a Llama: LayerNorm with biases, learned position embeddings, multi-head attention with a
fused q/k/v projection, a GELU MLP, and an output head tied to the token embedding. It meets the
pipeline contract of docs/OWN_MODEL.md — `embed(tokens)`, a stack of blocks built with `nnx.vmap`
(every parameter with a leading `layers` axis) and `head(x)` — and names every parameter
dimension with the logical names rainier shards by (`vocab`, `embed`, `heads`, `head_dim`,
`mlp`, `norm`), so tensor parallelism and FSDP split it. Imports only JAX and Flax.

Shapes: B batch, T sequence, D d_model, H heads, K head dim, F mlp width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 256          # bytes
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8          # tp up to 8
    mlp: int = 512
    max_positions: int = 256
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _normal(std: float, names: tuple):
    return nnx.with_partitioning(nnx.initializers.normal(std), names)


def _layer_norm(cfg: Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Flax computes the statistics in fp32 whatever the activation dtype.
    return nnx.LayerNorm(cfg.d_model, epsilon=cfg.eps, rngs=rngs,
                         scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))


class Block(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        D, H, K, F = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp
        # GPT-2's init: N(0, 0.02), the residual projections scaled by 1/sqrt(2·layers).
        resid = 0.02 / math.sqrt(2 * cfg.n_layers)
        zeros = nnx.initializers.zeros_init()
        self.ln1 = _layer_norm(cfg, rngs)
        # q, k and v in one matmul; the heads dimension is the one tensor parallelism splits.
        # Biases name a dimension `norm` (never split, never weight-decayed) where they have no
        # other name, so that AdamW leaves them alone (docs/OWN_MODEL.md).
        self.qkv = nnx.Einsum("btd,dchk->btchk", (D, 3, H, K), (3, H, K), rngs=rngs,
                              kernel_init=_normal(0.02, ("embed", None, "heads", "head_dim")),
                              bias_init=nnx.with_partitioning(zeros, ("norm", "heads", "head_dim")))
        self.proj = nnx.Einsum("bthk,hkd->btd", (H, K, D), (D,), rngs=rngs,
                               kernel_init=_normal(resid, ("heads", "head_dim", "embed")),
                               bias_init=nnx.with_partitioning(zeros, ("norm",)))
        self.ln2 = _layer_norm(cfg, rngs)
        self.up = nnx.Linear(D, F, rngs=rngs, kernel_init=_normal(0.02, ("embed", "mlp")),
                             bias_init=nnx.with_partitioning(zeros, ("mlp",)))
        self.down = nnx.Linear(F, D, rngs=rngs, kernel_init=_normal(resid, ("mlp", "embed")),
                               bias_init=nnx.with_partitioning(zeros, ("norm",)))

    def attention(self, x_BxTxD):
        qkv_BxTx3xHxK = self.qkv(x_BxTxD)
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
        T, K = x_BxTxD.shape[1], q_BxTxHxK.shape[-1]
        # Scores and softmax in fp32: the exponent's range is what bf16 loses first.
        s_BxHxTxT = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK,
                               preferred_element_type=jnp.float32) / math.sqrt(K)
        causal_TxT = jnp.tril(jnp.ones((T, T), dtype=bool))
        s_BxHxTxT = jnp.where(causal_TxT[None, None], s_BxHxTxT, -jnp.inf)
        p_BxHxTxT = jax.nn.softmax(s_BxHxTxT, axis=-1).astype(v_BxTxHxK.dtype)
        return self.proj(jnp.einsum("bhts,bshk->bthk", p_BxHxTxT, v_BxTxHxK))

    def __call__(self, x_BxTxD):
        h_BxTxD = x_BxTxD + self.attention(self.ln1(x_BxTxD))
        return h_BxTxD + self.down(jax.nn.gelu(self.up(self.ln2(h_BxTxD)), approximate=True))


class GPT2(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wte = nnx.Embed(cfg.vocab, cfg.d_model, rngs=rngs, embedding_init=_normal(0.02, ("vocab", "embed")))
        self.wpe = nnx.Embed(cfg.max_positions, cfg.d_model, rngs=rngs, embedding_init=_normal(0.01, (None, "embed")))

        # The stack: one Block whose parameters carry a leading `layers` axis of n_layers.
        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stack(rngs):
            return Block(cfg, rngs)
        self.blocks = stack(rngs)
        self.ln_f = _layer_norm(cfg, rngs)

    # The tables are read directly rather than through nnx.Embed's call and `attend`, which
    # compute in the Embed's own dtype (its param_dtype, fp32): this way the activations take the
    # dtype the parameters arrive in (bf16 under rainier's bf16 presets).
    def embed(self, tokens_BxT):
        T = tokens_BxT.shape[1]
        return jnp.take(self.wte.embedding[...], tokens_BxT, axis=0) + self.wpe.embedding[:T][None]

    def head(self, x_BxTxD):
        # Tied to the token embedding; logits accumulate in fp32.
        return jnp.einsum("btd,vd->btv", self.ln_f(x_BxTxD), self.wte.embedding[...],
                          preferred_element_type=jnp.float32)

    def __call__(self, tokens_BxT):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x_BxTxD, block):
            return block(x_BxTxD)
        return self.head(run(self.embed(tokens_BxT), self.blocks))


def tiny_gpt2(rngs: nnx.Rngs) -> GPT2:
    """The factory: 4 layers, d_model 128, 8 heads, vocabulary 256 (bytes), 256 positions."""
    return GPT2(Config(), rngs)
