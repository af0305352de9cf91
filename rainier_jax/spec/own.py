"""A user's own model as the rest of rainier sees it before JAX runs it: where it comes from, and
its parameter tree as shapes and logical axis names.

`model/nnx_adapter.py` builds one by loading a user's model file and factory and reading the module's variables
abstractly; this record is what validation, the run record and the byte counts read, the same
questions `ModelConfig` answers for the built-in Llama (rainier_jax/model/seam.py).
"""

from __future__ import annotations

import dataclasses
import math

from rainier_jax.config.errors import setting as marked
from rainier_jax.spec.model import leaves, leaves_with_paths
from rainier_jax.spec.precision import PRESETS, Policy

# The logical axis names a parameter may carry: the built-in model's (spec.model.param_axes), the
# keys of the parameter rules in parallel/axis_rules.py (tests/test_nnx_adapter.py checks they agree).
LOGICAL_AXES = ("layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm")


def is_model_file(text: str | None) -> bool:
    """True for a `FILE.py:FACTORY` model argument (anything else names a built-in model, a
    model TOML or a Hugging Face config)."""
    if not text or ":" not in text:
        return False
    return text.rsplit(":", 1)[0].endswith(".py")


@dataclasses.dataclass(frozen=True, eq=False)
class OwnModel:
    path: str            # absolute path of the model file
    factory: str         # the name of FACTORY in it
    sha256: str          # of the file's bytes, so a resumed run can tell the file changed
    vocab_size: int      # V of the logits
    n_layers: int        # depth, for the parity bounds: the blocks' `layers` axis, else 1 (docs/OWN_MODEL.md)
    shapes: dict         # parameter tree: nested dicts of shape tuples
    axes: dict           # same tree: a logical name (or None) per dimension
    pipeline: bool       # exposes embed / blocks / head (the pipeline contract)
    pipeline_problem: str = ""   # why `pipeline` is False (one clause), empty when it is True

    @property
    def name(self) -> str:
        return f"{self.path}:{self.factory}"

    @property
    def stack(self) -> str | None:
        """The top-level parameter key of the stacked blocks (the pipeline contract's `blocks`)."""
        return "blocks" if self.pipeline else None

    def outer_depth(self, key: str) -> int:
        """Depth of a parameter outside the stack for the parity bounds: where it sits in the
        forward pass is not known, so the deepest place, L + 1, which gives the widest bound — no
        parameter is held to a bound tighter than its true depth's (docs/OWN_MODEL.md)."""
        del key
        return self.n_layers + 1

    def param_shapes(self) -> dict:
        return self.shapes

    def param_axes(self) -> dict:
        return self.axes

    def num_params(self) -> int:
        return sum(math.prod(s) for s in leaves(self.shapes))

    def unnamed(self) -> list[str]:
        """Paths of the parameters with no logical axis names (they are replicated)."""
        return [p for p, axes in leaves_with_paths(self.axes) if all(a is None for a in axes)]


    def precision_problem(self, policy: Policy, setting: str = "precision") -> str | None:
        """Why this model cannot run `policy`, or None. Presets that cast at the step's boundary
        apply to any model; fp8 needs the built-in model's own matmuls (model/numerics.py)."""
        if not policy.fp8:
            return None
        usable = ", ".join(p.name for p in PRESETS.values() if not p.fp8)
        return (f"{marked(setting)} {policy.name}: needs the built-in model's own fp8 matmuls; "
                f"a Flax model runs {usable}")
