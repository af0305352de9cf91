"""A user's own model as the rest of rainier sees it before JAX runs it: where it comes from, and
its parameter tree as shapes and logical axis names.

`model/nnx_adapter.py` builds one by loading a user's model file and factory and reading the module's variables
abstractly; this record is what validation, the run record and the byte counts read, the same
questions `ModelConfig` answers for the built-in Llama (rainier_jax/model/seam.py).
"""

from __future__ import annotations

import dataclasses
import math

from rainier_jax.spec.model import leaves, leaves_with_paths


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

    @property
    def name(self) -> str:
        return f"{self.path}:{self.factory}"

    def param_shapes(self) -> dict:
        return self.shapes

    def param_axes(self) -> dict:
        return self.axes

    def num_params(self) -> int:
        return sum(math.prod(s) for s in leaves(self.shapes))

    def unnamed(self) -> list[str]:
        """Paths of the parameters with no logical axis names (they are replicated)."""
        return [p for p, axes in leaves_with_paths(self.axes) if all(a is None for a in axes)]

