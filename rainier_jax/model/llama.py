"""A Llama-style decoder as pure math: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Parameters are a plain dict pytree; layers are stacked on a leading axis and run under
`lax.scan`, so the program size does not grow with depth. The model never names mesh axes:
`param_axes` gives every parameter dimension a *logical* name, and the forward pass calls an
injected `constrain(x, logical_axes)` at block boundaries; `parallel/sharding.py` maps both onto a mesh.

Tensor names carry their shape: B batch, T sequence, D d_model, H query heads, G kv heads,
K head dim, F mlp width, V vocabulary, L layers.
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from rainier_jax.spec.model import ModelConfig, param_shapes
from rainier_jax.model.numerics import FP32, Compute
from rainier_jax.model.seam import Constrain, no_constraint


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fan-in scaled normal init; residual outputs further scaled by 1/sqrt(2L).

    Deterministic in `key` whatever the output sharding (JAX's partitionable threefry), which is
    what lets every layout start from bit-identical parameters.
    """
    shapes = param_shapes(cfg)
    D, F, L = cfg.d_model, cfg.mlp_dim, cfg.n_layers
    fan_in = {"wq": D, "wk": D, "wv": D, "wo": cfg.n_heads * cfg.head_dim,
              "w_gate": D, "w_up": D, "w_down": F}
    residual_out = {"wo", "w_down"}
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(flat))
    leaves = []
    for (path, shape), k in zip(flat, keys):
        name = path[-1].key
        if name.endswith("norm"):
            leaves.append(jnp.ones(shape, jnp.float32))
            continue
        if name in ("embed", "head"):
            std = 1.0 / math.sqrt(D)
        else:
            std = 1.0 / math.sqrt(fan_in[name])
            if name in residual_out:
                std /= math.sqrt(2 * L)
        leaves.append(std * jax.random.normal(k, shape, jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ---------------------------------------------------------------------------------------------
# Forward pass


def rms_norm(x_BxTxD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
    # Statistics and the scale multiply in fp32 whatever the activation dtype: the mean of squares
    # underflows in bf16, and the scale's gradient (a sum over every token) must not be summed in
    # bf16. Only the output is rounded, to the activation dtype.
    x32 = x_BxTxD.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * inv * scale_D.astype(jnp.float32)).astype(x_BxTxD.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    inv_freq_K2 = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles_TxK2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_K2[None, :]
    return jnp.cos(angles_TxK2), jnp.sin(angles_TxK2)


def apply_rope(x_BxTxNxK: jax.Array, cos_TxK2: jax.Array, sin_TxK2: jax.Array) -> jax.Array:
    # Rotate the two halves of each head (the Hugging Face Llama convention).
    x1, x2 = jnp.split(x_BxTxNxK, 2, axis=-1)
    cos, sin = cos_TxK2[None, :, None, :], sin_TxK2[None, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BxTxNxK.dtype)


def _fp8(p: dict, name: str):
    """A weight's fp8 amax metadata, present only under the fp8 policy."""
    return p.get("fp8", {}).get(name)


def attention(p: dict, x_BxTxD: jax.Array, rope: tuple[jax.Array, jax.Array], cfg: ModelConfig,
              constrain: Constrain, compute: Compute) -> jax.Array:
    # Names mark what selective rematerialisation keeps (`_SELECTIVE`).
    q_BxTxHxK = checkpoint_name(compute.linear("btd,dhk->bthk", x_BxTxD, p["wq"], _fp8(p, "wq")), "q")
    k_BxTxGxK = checkpoint_name(compute.linear("btd,dgk->btgk", x_BxTxD, p["wk"], _fp8(p, "wk")), "k")
    v_BxTxGxK = checkpoint_name(compute.linear("btd,dgk->btgk", x_BxTxD, p["wv"], _fp8(p, "wv")), "v")
    q_BxTxHxK = apply_rope(q_BxTxHxK, *rope)
    k_BxTxGxK = apply_rope(k_BxTxGxK, *rope)
    # Grouped-query attention: query head h reads kv head h // (H/G). Repeating kv heads up to H
    # lets tensor parallelism split query heads even when tp exceeds the kv heads (each rank then
    # keeps a copy of the kv heads it needs, as neuronx-distributed does).
    rep = cfg.n_heads // cfg.n_kv_heads
    k_BxTxHxK = constrain(jnp.repeat(k_BxTxGxK, rep, axis=2), ("batch", "seq", "heads", "head_dim"))
    v_BxTxHxK = constrain(jnp.repeat(v_BxTxGxK, rep, axis=2), ("batch", "seq", "heads", "head_dim"))
    q_BxTxHxK = constrain(q_BxTxHxK, ("batch", "seq", "heads", "head_dim"))

    T = x_BxTxD.shape[1]
    # Scores and softmax in fp32: the exponent's range is what bf16 loses first.
    s_BxHxTxT = compute.bmm("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK,
                            out_dtype=jnp.float32) / math.sqrt(cfg.head_dim)
    causal_TxT = jnp.tril(jnp.ones((T, T), dtype=bool))
    # -inf (not a large negative number) makes masked probabilities exactly zero, so a position
    # has exactly zero gradient with respect to any later one.
    s_BxHxTxT = jnp.where(causal_TxT[None, None], s_BxHxTxT, -jnp.inf)
    p_BxHxTxT = jax.nn.softmax(s_BxHxTxT, axis=-1).astype(v_BxTxHxK.dtype)
    o_BxTxHxK = checkpoint_name(compute.bmm("bhts,bshk->bthk", p_BxHxTxT, v_BxTxHxK), "attention_output")
    return compute.linear("bthk,hkd->btd", o_BxTxHxK, p["wo"], _fp8(p, "wo"))


def mlp(p: dict, x_BxTxD: jax.Array, constrain: Constrain, compute: Compute) -> jax.Array:
    gate_BxTxF = compute.linear("btd,df->btf", x_BxTxD, p["w_gate"], _fp8(p, "w_gate"))
    up_BxTxF = compute.linear("btd,df->btf", x_BxTxD, p["w_up"], _fp8(p, "w_up"))
    gate_BxTxF, up_BxTxF = checkpoint_name(gate_BxTxF, "mlp_gate"), checkpoint_name(up_BxTxF, "mlp_up")
    h_BxTxF = constrain(jax.nn.silu(gate_BxTxF) * up_BxTxF, ("batch", "seq", "mlp"))
    return compute.linear("btf,fd->btd", h_BxTxF, p["w_down"], _fp8(p, "w_down"))


def block(p: dict, x_BxTxD: jax.Array, rope, cfg: ModelConfig, constrain: Constrain,
          compute: Compute) -> jax.Array:
    h_BxTxD = checkpoint_name(x_BxTxD + attention(p, rms_norm(x_BxTxD, p["attn_norm"], cfg.norm_eps), rope, cfg,
                                                  constrain, compute), "attention_residual")
    out_BxTxD = h_BxTxD + mlp(p, rms_norm(h_BxTxD, p["mlp_norm"], cfg.norm_eps), constrain, compute)
    return constrain(out_BxTxD, ("batch", "seq", "embed"))


def embed(params: dict, tokens_BxT: jax.Array, constrain: Constrain, compute: Compute = FP32) -> jax.Array:
    # Constrain the table with activation rules first: that gathers an FSDP-split model dimension
    # once, instead of letting the gather turn into all-to-alls as wide as the fsdp group.
    table_VxD = constrain(params["embed"], ("vocab", "embed"))
    # The residual stream is kept in the compute dtype from here on.
    x_BxTxD = compute.cast(jnp.take(table_VxD, tokens_BxT, axis=0))
    return constrain(x_BxTxD, ("batch", "seq", "embed"))


# Activation rematerialisation of each block in the layer scan:
#   full       keep only each block's input; recompute the block in the backward pass (default:
#              on this CPU it is faster as well as smaller — stacking the saved intermediates,
#              attention probabilities above all, costs more than recomputing them: measured
#              0.99 → 0.84 s (fp32) and 0.76 → 0.39 s (bf16-mixed) for the tiny model's forward and
#              backward at batch 32 × 128)
#   selective  keep the matmul outputs (q, k, v, the attention output, the residual after attention,
#              the MLP's gate and up) and recompute the rest: the attention scores QKᵀ and their
#              softmax — the T×T tensors — and the cheap elementwise work (norms, RoPE, SiLU)
#   none       keep everything
# (The names are spec.run.REMAT.)
_SELECTIVE = jax.checkpoint_policies.save_only_these_names(
    "q", "k", "v", "attention_output", "attention_residual", "mlp_gate", "mlp_up")


def run_layers(layers: dict, x_BxTxD: jax.Array, cfg: ModelConfig,
               constrain: Constrain = no_constraint, compute: Compute = FP32, remat: str = "full") -> jax.Array:
    """A stack of blocks (`layers` leaves have a leading layer axis) under `lax.scan`; pipeline
    stages call this on their own slice of the stack."""
    rope = rope_tables(x_BxTxD.shape[1], cfg.head_dim, cfg.rope_theta)

    def plain_block(layer_params, x):
        return block(layer_params, x, rope, cfg, constrain, compute)

    layer = {"full": jax.checkpoint(plain_block),
             "selective": jax.checkpoint(plain_block, policy=_SELECTIVE),
             "none": plain_block}[remat]

    def step(x, layer_params):
        return layer(layer_params, x), None

    x_BxTxD, _ = jax.lax.scan(step, x_BxTxD, layers)
    return x_BxTxD


def head(params: dict, x_BxTxD: jax.Array, cfg: ModelConfig,
         constrain: Constrain = no_constraint, compute: Compute = FP32) -> jax.Array:
    """Final norm → fp32 logits. Reads `final_norm` and `head` (or, tied, `embed`) from `params`."""
    x_BxTxD = rms_norm(x_BxTxD, params["final_norm"], cfg.norm_eps)
    # Logits leave the matmul in fp32: the loss's log-softmax needs their full range.
    if cfg.tie_embeddings:
        table_VxD = constrain(params["embed"], ("vocab", "embed"))
        logits_BxTxV = compute.linear("btd,vd->btv", x_BxTxD, table_VxD, _fp8(params, "head"),
                                      out_dtype=jnp.float32)
    else:
        logits_BxTxV = compute.linear("btd,dv->btv", x_BxTxD, params["head"], _fp8(params, "head"),
                                      out_dtype=jnp.float32)
    return constrain(logits_BxTxV, ("batch", "seq", "vocab"))


def decode(params: dict, x_BxTxD: jax.Array, cfg: ModelConfig,
           constrain: Constrain = no_constraint, compute: Compute = FP32, remat: str = "full") -> jax.Array:
    """Blocks → final norm → logits, from input embeddings (the causality test enters here)."""
    x_BxTxD = run_layers(params["layers"], x_BxTxD, cfg, constrain, compute, remat)
    return head(params, x_BxTxD, cfg, constrain, compute)


def forward(params: dict, tokens_BxT: jax.Array, cfg: ModelConfig,
            constrain: Constrain = no_constraint, compute: Compute = FP32, remat: str = "full") -> jax.Array:
    return decode(params, embed(params, tokens_BxT, constrain, compute), cfg, constrain, compute, remat)
