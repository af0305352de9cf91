"""The run's settings (the `train` flags that are not hardware, model or layout), validated
before JAX starts. No JAX here, so the CLI rejects bad values in a fraction of a second."""

from __future__ import annotations

import dataclasses

from rainier_jax.spec.precision import PRESETS, Policy, get_policy
from rainier_jax.config.values import INT32_MAX, bounded_int, finite_float, size_product

# Activation rematerialisation choices (transformer.run_layers); kept here so the CLI checks the
# flag before JAX starts.
REMAT = ("full", "selective", "none")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The run's settings (CLI flags), validated before anything compiles."""
    steps: int = 100
    batch: int = 32
    seq: int = 128
    seed: int = 0
    lr: float = 3e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    # Pipeline: microbatches per data-parallel replica per step (with pp=1: gradient accumulation),
    # the schedule that orders them, and model chunks per pipeline device (interleaved only).
    microbatches: int = 1
    schedule: str = "1f1b"
    virtual_stages: int = 1
    # Precision preset (precision.PRESETS): storage and compute dtypes, rounding, loss scaling.
    precision: str = "fp32"
    # Activation rematerialisation of each block (transformer.run_layers): full, selective or none.
    # A pipeline recomputes each chunk in its backward tick whatever this says.
    remat: str = "full"
    # ZeRO-1: optimizer moments split over dp as well (weights and gradients are not).
    zero1: bool = False

    def __post_init__(self):
        # Each bound is what the compiled program can hold: the step counter, token ids and batch
        # indices are int32; the batch is an int32 array of batch × (seq + 1) tokens.
        for flag, lo, why in (("--steps", 1, "the step counter is int32"),
                              ("--batch", 1, "batch indices are int32"),
                              ("--seq", 1, "positions are int32"),
                              ("--seed", 0, "seeds enter the program as int32"),
                              ("--eval-every", 0, "steps are int32"),
                              ("--microbatches", 1, "a count of batch slices"),
                              ("--virtual-stages", 1, "a count of model chunks")):
            want = {"--seed": "a non-negative integer",
                    "--eval-every": "0 (only at the end) or a positive interval"}.get(flag)
            bounded_int(flag, getattr(self, _attr(flag)), lo=lo, want=want, why=why)
        size_product("--batch × --seq", {"--batch": self.batch, "--seq + 1": self.seq + 1}, limit=INT32_MAX,
                     why="the step's batch is one int32 array")
        finite_float("--lr", self.lr, want="a positive learning rate")
        for key in ("min_lr_ratio", "weight_decay", "grad_clip"):
            finite_float(key, getattr(self, key), positive=key == "grad_clip")
        bounded_int("warmup_steps", self.warmup_steps, lo=0)
        bounded_int("eval_batches", self.eval_batches)
        get_policy(self.precision)  # an unknown preset: ConfigError naming --precision
        if self.remat not in REMAT:
            raise ValueError(f"--remat {self.remat}: one of {', '.join(REMAT)}")

    @property
    def policy(self) -> Policy:
        return PRESETS[self.precision]


def _attr(flag: str) -> str:
    return flag[2:].replace("-", "_")
