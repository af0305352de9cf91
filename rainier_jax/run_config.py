"""The run's settings (the `train` flags that are not hardware, model or layout), validated
before JAX starts. No JAX here, so the CLI rejects bad values in a fraction of a second."""

from __future__ import annotations

import dataclasses
import math

from rainier_jax.precision import PRESETS, Policy, get_policy

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
        checks = [("--steps", self.steps > 0, "a positive number of steps"),
                  ("--batch", self.batch > 0, "a positive number of sequences"),
                  ("--seq", self.seq > 0, "a positive sequence length"),
                  ("--lr", self.lr > 0 and math.isfinite(self.lr), "a positive learning rate"),
                  ("--eval-every", self.eval_every >= 0, "0 (only at the end) or a positive interval"),
                  ("--seed", self.seed >= 0, "a non-negative integer"),
                  ("--microbatches", self.microbatches > 0, "a positive number of microbatches"),
                  ("--virtual-stages", self.virtual_stages > 0, "a positive number of chunks per device")]
        for flag, ok, want in checks:
            if not ok:
                raise ValueError(f"{flag} {getattr(self, flag[2:].replace('-', '_'))}: must be {want}")
        get_policy(self.precision)  # an unknown preset: ConfigError naming --precision
        if self.remat not in REMAT:
            raise ValueError(f"--remat {self.remat}: one of {', '.join(REMAT)}")

    @property
    def policy(self) -> Policy:
        return PRESETS[self.precision]
