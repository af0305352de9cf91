"""A precision policy applied: the model's matmuls, how stored tensors are rounded, loss scaling, fp8.

* `Compute` is what the model calls for every matmul (`linear` for weights, `bmm` for
  activation × activation). Under fp32 it is a plain einsum. Under the low-precision presets it
  casts both operands to the compute dtype and accumulates in fp32 (`preferred_element_type`), and
  its backward casts the incoming cotangent to the compute dtype too, so the two backward matmuls
  also get low-precision operands — left to autodiff they would be fp32 × bf16, which XLA runs at
  fp32 speed.
* `store` rounds an fp32 tree into the dtype it is kept in: round-to-nearest-even, or stochastic
  rounding driven by a counter-based hash of (seed, step, tensor path, global element index), so
  the bits do not depend on how the tensor is sharded and a resumed run rounds as the original did.
* `all_finite` / `next_loss_scale`: dynamic loss scaling for fp16.
* fp8: `quantize` with a per-tensor scale from an amax history (delayed scaling); the history is
  updated by the backward pass and returned as the "gradient" of the history, so it travels through
  `jax.grad` and `lax.scan` like any other input.
"""

from __future__ import annotations

import functools
import math
import zlib

import jax
import jax.numpy as jnp

from rainier_jax.spec.precision import PRESETS, Policy

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
E4M3 = jnp.float8_e4m3     # IEEE-style e4m3: max 240, has ±inf (Trainium2's; see spec/precision.py)
E5M2 = jnp.float8_e5m2     # max 57344: the range gradients need
FP8_MAX = {E4M3: 240.0, E5M2: 57344.0}
# Rows of a matmul's fp8 metadata [3, history]: amax histories of its input, weight and gradient.
FP8_ROWS = 3


# ---------------------------------------------------------------------------------------------
# Matmuls


def _transpose_equations(eq: str) -> tuple[str, str]:
    """For `a,b->out`, the einsums giving d(out)/da and d(out)/db from the cotangent of out."""
    ins, out = eq.replace(" ", "").split("->")
    a, b = ins.split(",")
    for name, x, other in (("first", a, b), ("second", b, a)):
        missing = set(x) - set(out) - set(other)
        if missing:  # an index summed within one operand alone has no einsum transpose
            raise ValueError(f"einsum {eq!r}: {name} operand index {sorted(missing)} appears nowhere else")
    return f"{out},{b}->{a}", f"{a},{out}->{b}"


def _dot32(eq: str, a, b):
    """einsum with fp32 accumulation and output, written as one batched row-major GEMM.

    XLA's CPU backend runs bf16 × bf16 → fp32 only through its XNNPACK path, which takes a dot
    whose operands are [batch, M, K] × [batch, K, N]; any other dot falls back to a kernel that
    fails at run time ("Unsupported element type for DotThunk"). Which form XLA picks depends on
    how it folds transposes into the dot, so the transposes are made real: operands and result
    are permuted explicitly and an optimization barrier keeps XLA from folding them back.
    """
    if a.dtype == jnp.float32 and b.dtype == jnp.float32:
        return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)
    ins, out = eq.replace(" ", "").split("->")
    la, lb = ins.split(",")
    batch = [c for c in out if c in la and c in lb]
    contract = [c for c in la if c in lb and c not in out]
    free_a = [c for c in la if c not in lb]
    free_b = [c for c in lb if c not in la]

    def permuted(x, labels, order):
        perm = [labels.index(c) for c in order]
        return x if perm == sorted(perm) else jax.lax.optimization_barrier(jnp.transpose(x, perm))

    a2 = permuted(a, la, batch + free_a + contract)
    b2 = permuted(b, lb, batch + contract + free_b)
    size = dict(zip(la, a.shape)) | dict(zip(lb, b.shape))
    n = len(batch)
    dims = lambda labels: [size[c] for c in labels]  # noqa: E731
    prod = lambda labels: math.prod(dims(labels))  # noqa: E731
    a3 = a2.reshape(*dims(batch), prod(free_a), prod(contract))
    b3 = b2.reshape(*dims(batch), prod(contract), prod(free_b))
    y = jax.lax.dot_general(a3, b3, (((n + 1,), (n,)), (tuple(range(n)), tuple(range(n)))),
                            preferred_element_type=jnp.float32)
    y = y.reshape(dims(batch + free_a + free_b))
    have = batch + free_a + free_b
    perm = [have.index(c) for c in out]
    if perm == sorted(perm):
        return y
    return jnp.transpose(jax.lax.optimization_barrier(y), perm)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def low_precision_dot(eq: str, compute_dtype, out_dtype, a, b):
    """einsum of `a` and `b` cast to `compute_dtype`, accumulated in fp32, returned as `out_dtype`."""
    return _dot32(eq, a.astype(compute_dtype), b.astype(compute_dtype)).astype(out_dtype)


def _low_fwd(eq, compute_dtype, out_dtype, a, b):
    a_c, b_c = a.astype(compute_dtype), b.astype(compute_dtype)
    # Keep the primal dtypes as zero-size arrays: the cotangents must come back in them.
    return (_dot32(eq, a_c, b_c).astype(out_dtype),
            (a_c, b_c, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype)))


def _low_bwd(eq, compute_dtype, out_dtype, res, g):
    a_c, b_c, a_tag, b_tag = res
    eq_a, eq_b = _transpose_equations(eq)
    g_c = g.astype(compute_dtype)  # the cast that makes the backward matmuls low-precision too
    return _dot32(eq_a, g_c, b_c).astype(a_tag.dtype), _dot32(eq_b, a_c, g_c).astype(b_tag.dtype)


low_precision_dot.defvjp(_low_fwd, _low_bwd)


class Compute:
    """The matmul and activation-dtype side of a policy, as the model sees it."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.dtype = DTYPES[policy.compute_dtype]
        self.low = self.dtype != jnp.float32

    def cast(self, x):
        """Activations enter the layers in the compute dtype."""
        return x.astype(self.dtype)

    def linear(self, eq: str, x, w, fp8_meta=None, out_dtype=None):
        """x · w for a weight `w`; fp8 presets pass the weight's amax metadata."""
        out_dtype = out_dtype or self.dtype
        if fp8_meta is not None:
            return fp8_dot(eq, out_dtype, x, w, fp8_meta)
        if not self.low:
            return jnp.einsum(eq, x, w).astype(out_dtype)
        return low_precision_dot(eq, self.dtype, out_dtype, x, w)

    def bmm(self, eq: str, a, b, out_dtype=None):
        """Activation × activation (attention scores, probabilities × values): never fp8."""
        out_dtype = out_dtype or self.dtype
        if not self.low:
            return _dot32(eq, a, b).astype(out_dtype)
        return low_precision_dot(eq, self.dtype, out_dtype, a, b)


# ---------------------------------------------------------------------------------------------
# fp8 with delayed scaling


def fp8_scale(history, fmt, current_amax):
    """Scale s such that x / s fills the format's range, from the largest amax of recent steps
    (delayed scaling). Before any history exists (the first step) the tensor's own amax is used:
    scale 1 would flush gradients of ~1e-4 to e5m2's subnormals."""
    amax = jnp.max(history)
    amax = jnp.where(amax > 0, amax, current_amax)
    return jnp.where(amax > 0, amax / FP8_MAX[fmt], 1.0).astype(jnp.float32)


def quantize(x, scale, fmt):
    """x / scale rounded to `fmt` (nearest-even), saturating at the format's max: an amax above the
    history's clips instead of overflowing to inf."""
    m = FP8_MAX[fmt]
    return jnp.clip(x.astype(jnp.float32) / scale, -m, m).astype(fmt)


def _push(history, amax):
    return jnp.concatenate([amax[None].astype(jnp.float32), history[:-1]])


def _fp8_mm(eq, qa, qb, scale):
    # fp8 × fp8 products are exact in fp32; widening fp8 to bf16 is exact too (more mantissa and
    # exponent bits), so this is an fp8 matmul with fp32 accumulation, whatever the CPU supports.
    return _dot32(eq, qa.astype(jnp.bfloat16), qb.astype(jnp.bfloat16)) * scale


def _amax(x):
    return jnp.max(jnp.abs(x)).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def fp8_dot(eq: str, out_dtype, x, w, meta):
    return _fp8_fwd(eq, out_dtype, x, w, meta)[0]


def _fp8_fwd(eq, out_dtype, x, w, meta):
    amax_x, amax_w = _amax(x), _amax(w)
    sx, sw = fp8_scale(meta[0], E4M3, amax_x), fp8_scale(meta[1], E4M3, amax_w)
    qx, qw = quantize(x, sx, E4M3), quantize(w, sw, E4M3)
    y = _fp8_mm(eq, qx, qw, sx * sw).astype(out_dtype)
    return y, (qx, qw, sx, sw, meta, amax_x, amax_w, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _fp8_bwd(eq, out_dtype, res, g):
    qx, qw, sx, sw, meta, amax_x, amax_w, x_tag, w_tag = res
    eq_x, eq_w = _transpose_equations(eq)
    amax_g = _amax(g)
    sg = fp8_scale(meta[2], E5M2, amax_g)
    qg = quantize(g, sg, E5M2)
    dx = _fp8_mm(eq_x, qg, qw, sg * sw).astype(x_tag.dtype)
    dw = _fp8_mm(eq_w, qx, qg, sx * sg).astype(w_tag.dtype)
    # The metadata's "gradient" is its next value: each history with this step's amax pushed in.
    new_meta = jnp.stack([_push(meta[0], amax_x), _push(meta[1], amax_w), _push(meta[2], amax_g)])
    return dx, dw, new_meta


fp8_dot.defvjp(_fp8_fwd, _fp8_bwd)


# ---------------------------------------------------------------------------------------------
# Storing: nearest or stochastic rounding


def _mix(h):
    """A 32-bit integer finaliser (the 'lowbias32' constants): every input bit affects every
    output bit, which is all stochastic rounding needs from its random bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def path_id(name: str) -> int:
    return zlib.crc32(name.encode())


def random_bits(shape: tuple[int, ...], *, seed, step, tensor_id: int) -> jax.Array:
    """uint32 bits for every element of a tensor of global `shape`, a pure function of (seed,
    step, tensor, global element index). Built from iotas over the global shape, which the SPMD
    partitioner gives each shard with its own offsets: the bits do not depend on the sharding."""
    key = _mix(jnp.uint32(tensor_id) ^ _mix(jnp.asarray(step).astype(jnp.uint32)
                                            ^ _mix(jnp.asarray(seed).astype(jnp.uint32) + jnp.uint32(0x9E3779B9))))
    h = jnp.broadcast_to(key, shape)
    # One mixing round per dimension: no flat index, so tensors beyond 2^32 elements cannot alias.
    for axis in range(len(shape)):
        h = _mix(h ^ jax.lax.broadcasted_iota(jnp.uint32, shape, axis))
    return h


def round_stochastic_bf16(x, bits):
    """fp32 → bf16, rounding up in magnitude with probability (dropped bits) / 2^16: unbiased, and
    always one of the two bf16 neighbours of x. Non-finite values round to nearest (stay inf/nan)."""
    x = x.astype(jnp.float32)
    raw = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bumped = (raw + (bits >> 16)) & jnp.uint32(0xFFFF0000)
    y = jax.lax.bitcast_convert_type(bumped, jnp.float32).astype(jnp.bfloat16)  # exact: low bits are 0
    return jnp.where(jnp.isfinite(x), y, x.astype(jnp.bfloat16))


def store(tree, policy: Policy, *, seed, step, prefix: str):
    """Round every floating leaf of an fp32 `tree` into the policy's storage dtype. `prefix`
    separates trees (params, optimizer) so their random streams differ."""
    dtype = DTYPES[policy.param_dtype]

    def one(path, x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x   # counters
        if dtype == jnp.float32:
            return x.astype(jnp.float32)
        if policy.stochastic_rounding:
            tid = path_id(prefix + jax.tree_util.keystr(path))
            return round_stochastic_bf16(x, random_bits(x.shape, seed=seed, step=step, tensor_id=tid))
        return x.astype(dtype)   # round to nearest even
    return jax.tree_util.tree_map_with_path(one, tree)


def upcast(tree):
    """fp32 view of a stored tree, for the optimizer's arithmetic."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


# ---------------------------------------------------------------------------------------------
# Dynamic loss scaling


def loss_scale_init(policy: Policy) -> dict:
    return {"loss_scale": jnp.float32(policy.initial_loss_scale),
            "good_steps": jnp.int32(0), "skipped": jnp.int32(0)}


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def next_loss_scale(state: dict, finite, policy: Policy) -> dict:
    """Overflow: halve the scale and count a skipped step. `growth_interval` finite steps in a
    row: double it. (Never below 1: a scale that small means fp16 cannot hold these gradients.)"""
    grow = finite & (state["good_steps"] + 1 >= policy.growth_interval)
    scale = jnp.where(finite, jnp.where(grow, state["loss_scale"] * 2, state["loss_scale"]),
                      jnp.maximum(state["loss_scale"] / 2, 1.0))
    good = jnp.where(finite & ~grow, state["good_steps"] + 1, 0)
    return {"loss_scale": scale.astype(jnp.float32), "good_steps": good.astype(jnp.int32),
            "skipped": (state["skipped"] + (~finite).astype(jnp.int32)).astype(jnp.int32)}


FP32 = Compute(PRESETS["fp32"])
