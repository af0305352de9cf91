"""Precision policies: which dtype every tensor is stored and computed in, as Trainium users run them.

No JAX here (dtypes are named by string), so the CLI checks `--precision` before JAX starts and
the performance model can read bytes per parameter without compiling anything. The JAX side —
matmul casts, stochastic rounding, loss scaling, fp8 scaling — is `model/numerics.py`.

The presets follow neuronx-distributed-training's precision types (fp32, mixed_precision, bf16SR)
plus the fp16 and fp8 recipes of GPU frameworks:

| preset      | weights + Adam moments | matmul operands / accumulation | rounding of stored tensors |
|-------------|------------------------|--------------------------------|----------------------------|
| fp32        | fp32                   | fp32 / fp32                    | —                          |
| bf16-mixed  | fp32 (master)          | bf16 / fp32                    | —                          |
| bf16        | bf16                   | bf16 / fp32                    | nearest-even               |
| bf16-sr     | bf16                   | bf16 / fp32                    | stochastic                 |
| fp16-mixed  | fp32 (master)          | fp16 / fp32, dynamic loss scale| —                          |
| fp8         | fp32 (master)          | e4m3 fwd, e5m2 grads / fp32    | —                          |

In every preset softmax, norm statistics, the loss, gradient clipping and the optimizer's
arithmetic run in fp32; only what is *stored* differs.
"""

from __future__ import annotations

import dataclasses
import math

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.spec.dtypes import itemsize


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    summary: str
    param_dtype: str          # weights and optimizer moments at rest
    compute_dtype: str        # activations and matmul operands (fp8 presets: non-fp8 ops)
    stochastic_rounding: bool = False
    loss_scaling: bool = False
    fp8: bool = False
    # Dynamic loss scaling (fp16-mixed): start at 2^15, halve on overflow, double after
    # `growth_interval` finite steps in a row. PyTorch's GradScaler grows every 2,000 steps; runs
    # here are hundreds of steps long, so 100 lets a run see the scale recover.
    initial_loss_scale: float = 2.0 ** 15
    growth_interval: int = 100
    # fp8 delayed scaling: each tensor's scale comes from the max of its last `amax_history` amaxes.
    amax_history: int = 16

    @property
    def rounding_unit(self) -> float:
        """Effective unit roundoff of the low-precision roundings this policy adds to an fp32
        computation (0 for fp32): bf16 2^-8, fp16 2^-11. fp8 rounds as many values to fp8 (unit
        2^-3, e5m2's, the coarser of its two formats) as to bf16, so its unit is the root sum of
        squares of the two. Used by the parity harness's bound (parity.harness.Bound.for_precisions)."""
        units = {"float32": 0.0, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
        u = units[self.compute_dtype]
        return math.sqrt(u * u + (2.0 ** -3) ** 2) if self.fp8 else u

    @property
    def param_bytes(self) -> int:
        return itemsize(self.param_dtype)

    def bytes_per_param(self) -> dict[str, int]:
        """Bytes held per parameter between steps: weights, gradients, Adam's two moments.
        Gradients have the weights' dtype (the cast to the compute dtype is inside the step, so
        gradients of fp32 master weights arrive in fp32). Transients (the bf16 working copy of
        fp32 weights, fp8 amax histories: 12·history bytes per matmul) are not counted."""
        w = self.param_bytes
        return {"weights": w, "grads": w, "optimizer": 2 * w, "total": 4 * w}

    def describe(self) -> str:
        b = self.bytes_per_param()
        return (f"precision {self.name}: {self.summary}; {b['total']} bytes/param "
                f"(weights {b['weights']} + grads {b['grads']} + optimizer {b['optimizer']})")


PRESETS: dict[str, Policy] = {p.name: p for p in [
    Policy("fp32", "everything fp32", "float32", "float32"),
    Policy("bf16-mixed", "fp32 master weights and Adam state, bf16 matmuls with fp32 accumulation",
           "float32", "bfloat16"),
    Policy("bf16", "bf16 weights and Adam state, round-to-nearest-even updates", "bfloat16", "bfloat16"),
    Policy("bf16-sr", "bf16 weights and Adam state, stochastically rounded updates", "bfloat16", "bfloat16",
           stochastic_rounding=True),
    Policy("fp16-mixed", "fp32 master weights, fp16 matmuls, dynamic loss scaling", "float32", "float16",
           loss_scaling=True),
    # Trainium2's e4m3 is the IEEE-style float8_e4m3 (max 240, with infinities): neuronx-cc rejects
    # F8E4M3FN ("not supported on TRN1/TRN2", error NCC_EVRF051), JAX's other e4m3 (max 448).
    Policy("fp8", "fp32 master weights, float8_e4m3 forward / float8_e5m2 gradient matmuls with "
           "delayed per-tensor scaling, bf16 elsewhere", "float32", "bfloat16", fp8=True),
]}


def get_policy(name: str, setting: str = "precision") -> Policy:
    """The preset called `name`; `setting` names it in the message when there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"{marked(setting)} {name}: unknown precision (choose {', '.join(PRESETS)})") from None


def incompatibility(policy: Policy, *, pp: int, microbatches: int, setting: str = "precision") -> str | None:
    """Why `policy` cannot run with these options (naming the setting and the fix, settings marked
    as in a ConfigError), or None."""
    if policy.fp8 and (pp > 1 or microbatches > 1):
        # Delayed scaling records one amax per tensor per step; with several microbatches the
        # executor would have to combine them by max, which the gradient path (a sum) cannot do.
        what = f"pp={pp}" if pp > 1 else f"{marked('microbatches')} {microbatches}"
        return (f"{marked(setting)} fp8 with {what}: fp8 delayed scaling needs one forward and backward per step; "
                f"use pp=1 and {marked('microbatches')} 1, or {marked('precision')} bf16-mixed")
    return None


def check_compatible(policy: Policy, *, pp: int, microbatches: int, setting: str = "precision") -> None:
    reason = incompatibility(policy, pp=pp, microbatches=microbatches, setting=setting)
    if reason:
        raise ConfigError(reason)
