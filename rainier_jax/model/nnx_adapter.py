"""A user's Flax NNX model behind the model seam (rainier_jax/model/seam.py).

The spec (`spec.own.OwnModel`) comes from `load_own_model` (model/nnx_loader.py, re-exported here);
`NnxNetwork.of(spec)` reloads the file, refuses it if it changed, and runs the module from the
seam's pure-dict parameters: each forward pass merges them into the module's graph (its other
state held as constants), casts them to the precision's compute dtype, calls the module and
returns fp32 logits. The module names logical axes only; which mesh axis splits them is decided
outside the model layer. Contract, remat and what is not supported: docs/OWN_MODEL.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.model.nnx_loader import BLOCKS, Graph, graph_of, load_own_model, read
from rainier_jax.model.seam import Context, Params
from rainier_jax.spec.own import OwnModel
from rainier_jax.spec.precision import PRESETS, Policy

__all__ = ["NnxNetwork", "NnxStages", "load_own_model"]

BOUNDARY = ("batch", "seq", "embed")     # a stage's (and a block's) activations
LOGITS = ("batch", "seq", "vocab")

# Rematerialisation, spec.run.REMAT. `selective` keeps the outputs of matmuls against weights (a
# dot with no batch dimensions: the projections, the MLP) and recomputes the rest — attention's
# scores and probabilities (batched dots), norms, activations — as the built-in model's does.
_SELECTIVE = jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def _remat(fn, remat: str):
    return {"full": lambda f: jax.checkpoint(f),
            "selective": lambda f: jax.checkpoint(f, policy=_SELECTIVE),
            "none": lambda f: f}[remat](fn)


def _cast(params: Params, ctx: Context) -> Params:
    """The precision's cast at the model's boundary: floating parameters to the compute dtype (a
    no-op under fp32); the module then computes in the dtypes its inputs promote to."""
    if ctx.compute is None:
        return params
    return jax.tree.map(lambda x: ctx.compute.cast(x) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


# Parameters whose dimensions are only these (embedding tables, a head) are constrained by the
# activation rules before use, as the built-in model constrains its table: that gathers an
# FSDP-split model dimension once, instead of letting the embedding's gather turn into
# all-to-alls as wide as the fsdp group.
_TABLE_AXES = {"vocab", "embed", None}


def _gather_tables(params: Params, axes: dict, ctx: Context) -> Params:
    def one(x, names):
        return ctx.constrain(x, names) if names and set(names) <= _TABLE_AXES and "embed" in names else x
    return jax.tree.map(one, params, {k: axes[k] for k in params})


def _f32(logits):
    # Logits leave the model in fp32 whatever the module computed in: the loss's log-softmax
    # needs their full range.
    return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class NnxStages:
    """The pipeline contract's three stages; `layers` is the key of the stack in the params."""
    net: NnxNetwork
    layers: str = BLOCKS

    def _outer_module(self, outer: Params, ctx: Context):
        # The blocks' params enter as their shapes only: embed and head never read them.
        outer = _gather_tables(_cast(outer, ctx), self.net.spec.axes, ctx)
        full = {**outer, self.layers: self.net.graph.abstract[self.layers]}
        return self.net.graph.module(full, self.net.rest)

    def embed(self, outer: Params, tokens_BxT, ctx: Context):
        x_BxTxD = self._outer_module(outer, ctx).embed(tokens_BxT)
        if ctx.compute is not None and jnp.issubdtype(x_BxTxD.dtype, jnp.floating):
            # The residual stream is kept in the compute dtype from here on, as in the built-in
            # model: Flax layers with a dtype of their own (nnx.Embed's is its param_dtype)
            # would otherwise keep it in fp32.
            x_BxTxD = ctx.compute.cast(x_BxTxD)
        return ctx.constrain(x_BxTxD, BOUNDARY)

    def blocks(self, layers: Params, x_BxTxD, ctx: Context):
        graph = self.net.graph

        def block(layer, x):
            # The scan's carry keeps the stage input's dtype, whatever a block promotes to.
            return ctx.constrain(graph.block(layer)(x).astype(x.dtype), BOUNDARY)
        block = _remat(block, ctx.remat)

        def step(x, layer):
            return block(layer, x), None

        x_BxTxD, _ = jax.lax.scan(step, x_BxTxD, _cast(layers, ctx))
        return x_BxTxD

    def head(self, outer: Params, x_BxTxD, ctx: Context):
        return ctx.constrain(_f32(self._outer_module(outer, ctx).head(x_BxTxD)), LOGITS)


@dataclasses.dataclass(frozen=True, eq=False)
class NnxNetwork:
    spec: OwnModel
    graph: Graph
    rest: Any           # the module's non-Param state, concrete (constants of every program)

    @classmethod
    def of(cls, spec: OwnModel) -> NnxNetwork:
        """The network of a loaded spec: the file read again and refused if it changed."""
        where = f"{marked('model')} {spec.name}"
        path = Path(spec.path)
        if not path.is_file():
            raise ConfigError(f"{where}: the model file is gone; restore {path}")
        data = read(path, where)
        sha = hashlib.sha256(data).hexdigest()
        if sha != spec.sha256:
            raise ConfigError(f"{where}: the file changed since the model was loaded (sha256 {spec.sha256[:12]}…, "
                              f"now {sha[:12]}…); restore it, or load it again and start a new run")
        graph = graph_of(path, spec.factory, data, sha, where)
        return cls(spec, graph, graph.constants())

    @property
    def stages(self) -> NnxStages | None:
        return NnxStages(self) if self.spec.pipeline else None

    def init(self, key) -> Params:
        return self.graph.init(key)

    def logits(self, params: Params, tokens_BxT, ctx: Context):
        stages = self.stages
        if stages is not None:
            # Remat per block, as in a pipeline stage: the same computation either way.
            outer = {k: v for k, v in params.items() if k != stages.layers}
            x_BxTxD = stages.embed(outer, tokens_BxT, ctx)
            x_BxTxD = stages.blocks(params[stages.layers], x_BxTxD, ctx)
            return stages.head(outer, x_BxTxD, ctx)

        # No blocks to remat one by one: the whole forward pass is (docs/OWN_MODEL.md).
        def forward(p, tokens):
            p = _gather_tables(_cast(p, ctx), self.spec.axes, ctx)
            return _f32(self.graph.module(p, self.rest)(tokens))
        return ctx.constrain(_remat(forward, ctx.remat)(params, tokens_BxT), LOGITS)

    def decay_mask(self, params: Params) -> Params:
        """AdamW decays matrices — two or more dimensions, not counting a stacked `layers` axis —
        except those with a `norm` dimension; vectors (biases, norm scales) are not decayed."""
        def decays(_, axes):
            return sum(a != "layers" for a in axes) >= 2 and "norm" not in axes
        return jax.tree.map(decays, params, self.spec.axes)

    def fp8_init(self, policy: Policy) -> Params:
        # Never called: validation refuses fp8 for this model (OwnModel.precision_problem).
        raise ConfigError(self.spec.precision_problem(PRESETS["fp8"]))

    def with_fp8(self, params: Params, meta: Params | None) -> Params:
        if meta is not None:   # never: validation refuses fp8 for this model first
            raise ConfigError(self.spec.precision_problem(PRESETS["fp8"]))
        return params
