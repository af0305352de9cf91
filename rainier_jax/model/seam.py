"""The model seam: everything the rest of rainier knows about a model, asked of one object.

A model enters as a *spec* — JAX-free, what validation, the run record and the performance model
read: a name, the vocabulary its logits cover, its depth, and its parameter tree as shapes and
logical axis names (`ModelConfig` for the built-in Llama, `spec.own.OwnModel` for a user's Flax
NNX model). `networks.network(spec)` (rainier_jax/model/networks.py) gives the JAX side, a
`Network`: how the parameters initialise, the forward pass to logits, which parameters take
weight decay, and optionally how it splits into pipeline stages. The train step, the pipeline
executor, the parity harness, checkpoints and the compiled profile read a model only through
these two. Which precision presets a model can run is a spec question (`OwnModel.precision_problem`).

Parameters are a pytree of nested dicts whose leaves are fp32 arrays (what `init` returns), the
same tree as the spec's shapes and axes; the step casts and rounds them by the precision policy.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Protocol

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from rainier_jax.model.numerics import Compute
    from rainier_jax.spec.model import ModelConfig
    from rainier_jax.spec.own import OwnModel
    from rainier_jax.spec.precision import Policy

Params = Any  # nested dicts of arrays
Constrain = Callable[[jax.Array, tuple[str | None, ...]], jax.Array]


def no_constraint(x, axes):
    del axes
    return x


@dataclasses.dataclass(frozen=True)
class Context:
    """What the program hands a forward pass: where activations are pinned to the mesh (by
    logical axis names), the precision's casts, and which activations the backward recomputes."""
    constrain: Constrain = no_constraint
    compute: Compute | None = None   # None: fp32 (numerics.FP32)
    remat: str = "full"              # spec.run.REMAT

    def with_remat(self, remat: str) -> Context:
        return dataclasses.replace(self, remat=remat)


class Stages(Protocol):
    """How a model splits into pipeline stages: an embedding, a stack of identical blocks whose
    parameters have a leading layer axis (stored at the top-level key `layers`), and a head.
    `outer` is every parameter outside the stack (the embedding and the head may share some,
    e.g. tied embeddings)."""
    layers: str

    def embed(self, outer: Params, tokens_BxT, ctx: Context): ...
    def blocks(self, layers: Params, x, ctx: Context): ...
    def head(self, outer: Params, x, ctx: Context): ...   # → fp32 logits [B, T, V]


class Network(Protocol):
    spec: ModelConfig | OwnModel
    stages: Stages | None   # None: the model cannot run with pp > 1

    def init(self, key) -> Params:
        """fp32 parameters, deterministic in `key` whatever their sharding."""

    def logits(self, params: Params, tokens_BxT, ctx: Context):
        """fp32 logits [B, T, V] of int32 tokens [B, T]."""

    def decay_mask(self, params: Params) -> Params:
        """True for the parameters AdamW decays."""

    def fp8_init(self, policy: Policy) -> Params:
        """fp8 amax histories (only for a network that runs the fp8 preset)."""

    def with_fp8(self, params: Params, meta: Params | None) -> Params:
        """The parameters with their fp8 metadata beside them, as the forward pass reads them."""


def cross_entropy(logits_BxTxV, targets_BxT):
    """Mean next-token loss, computed in fp32."""
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return jnp.mean(nll_BxT)


def loss(net: Network, params: Params, batch_BxT1, ctx: Context):
    """Loss of a `[B, T+1]` token batch: predict tokens 1..T from tokens 0..T-1."""
    inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
    return cross_entropy(net.logits(params, inputs_BxT, ctx), targets_BxT)
