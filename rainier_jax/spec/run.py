"""The run's settings (what `train` is told besides hardware, model and layout), validated
before JAX starts. No JAX here, so the CLI rejects bad values in a fraction of a second.

Messages name each setting by its field (`batch`, `eval_every`), marked with
`errors.setting()`; the CLI spells them as its flags (`--batch`, `--eval-every`)."""

from __future__ import annotations

import dataclasses

from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.spec.precision import PRESETS, Policy, get_policy
from rainier_jax.config.values import INT32_MAX, bounded_int, finite_float, size_product

# Activation rematerialisation choices (model.llama.run_layers); kept here so the CLI checks the
# setting before JAX starts.
REMAT = ("full", "selective", "none")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The run's settings, validated before anything compiles (a ConfigError names the field)."""
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
    # Precision preset (spec.precision.PRESETS): storage and compute dtypes, rounding, loss scaling.
    precision: str = "fp32"
    # Activation rematerialisation of each block (model.llama.run_layers): full, selective or none.
    # A pipeline recomputes each chunk in its backward tick whatever this says.
    remat: str = "full"
    # ZeRO-1: optimizer moments split over dp as well (weights and gradients are not).
    zero1: bool = False

    def __post_init__(self):
        # Each bound is what the compiled program can hold: the step counter, token ids and batch
        # indices are int32; the batch is an int32 array of batch × (seq + 1) tokens.
        for field, lo, want, why in _INT_BOUNDS:
            bounded_int(setting(field), getattr(self, field), lo=lo, want=want, why=why)
        batch, seq = setting("batch"), setting("seq")
        size_product(f"{batch} × {seq}", {batch: self.batch, f"{seq} + 1": self.seq + 1}, limit=INT32_MAX,
                     why="the step's batch is one int32 array")
        finite_float(setting("lr"), self.lr, want="a positive learning rate")
        for field in ("min_lr_ratio", "weight_decay", "grad_clip"):
            finite_float(setting(field), getattr(self, field), positive=field == "grad_clip")
        bounded_int(setting("warmup_steps"), self.warmup_steps, lo=0)
        bounded_int(setting("eval_batches"), self.eval_batches)
        get_policy(self.precision)  # an unknown preset: ConfigError naming `precision`
        if self.remat not in REMAT:
            raise ConfigError(f"{setting('remat')} {self.remat}: one of {', '.join(REMAT)}")

    @property
    def policy(self) -> Policy:
        return PRESETS[self.precision]


# (field, lowest value, what the message asks for (None: "a positive integer" or "an integer ≥ lo"),
# where the upper bound INT32_MAX comes from), in the order RunConfig checks them.
_INT_BOUNDS = (
    ("steps", 1, None, "the step counter is int32"),
    ("batch", 1, None, "batch indices are int32"),
    ("seq", 1, None, "positions are int32"),
    ("seed", 0, "a non-negative integer", "seeds enter the program as int32"),
    ("eval_every", 0, "0 (only at the end) or a positive interval", "steps are int32"),
    ("microbatches", 1, None, "a count of batch slices"),
    ("virtual_stages", 1, None, "a count of model chunks"),
)
