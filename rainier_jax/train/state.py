"""The train state: what one step reads and writes, and what a checkpoint holds.

Its own module so that the checkpoint store can name it without importing the step machinery
(rainier_jax/train/loop.py builds and updates it)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    params: dict
    opt_state: Any
    step: jax.Array  # completed steps (the data position), int32 scalar
    # The policy's own state: loss scale, good-step and skip counts (fp16-mixed), amax histories
    # (fp8); empty otherwise.
    precision: dict = dataclasses.field(default_factory=dict)
