"""The built-in Llama behind the model seam (rainier_jax/model/seam.py): its tree is
`spec.model.param_shapes`/`param_axes`, its math `model/llama.py`; its fp8 metadata (which
weights carry amax histories, and where they sit in the tree) is here, the fp8 arithmetic in
`model/numerics.py`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rainier_jax.model import llama, numerics
from rainier_jax.model.seam import Context, Params
from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.precision import Policy


# The weights that go through `Compute.linear` (model/llama.py), each with fp8 metadata under the
# fp8 policy.
LINEAR_WEIGHTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def _compute(ctx: Context) -> numerics.Compute:
    return ctx.compute or numerics.FP32


@dataclasses.dataclass(frozen=True)
class LlamaStages:
    cfg: ModelConfig
    layers: str = "layers"

    def embed(self, outer: Params, tokens_BxT, ctx: Context):
        return llama.embed(outer, tokens_BxT, ctx.constrain, _compute(ctx))

    def blocks(self, layers: Params, x_BxTxD, ctx: Context):
        return llama.run_layers(layers, x_BxTxD, self.cfg, ctx.constrain, _compute(ctx), ctx.remat)

    def head(self, outer: Params, x_BxTxD, ctx: Context):
        return llama.head(outer, x_BxTxD, self.cfg, ctx.constrain, _compute(ctx))


@dataclasses.dataclass(frozen=True)
class Llama:
    spec: ModelConfig

    @property
    def stages(self) -> LlamaStages:
        return LlamaStages(self.spec)

    def init(self, key) -> Params:
        return llama.init_params(self.spec, key)

    def logits(self, params: Params, tokens_BxT, ctx: Context):
        return llama.forward(params, tokens_BxT, self.spec, ctx.constrain, _compute(ctx), ctx.remat)

    def decay_mask(self, params: Params) -> Params:
        # No weight decay on norm scales: decaying them towards 0 fights the normalisation.
        return jax.tree_util.tree_map_with_path(lambda path, _: not path[-1].key.endswith("norm"), params)

    def fp8_init(self, policy: Policy) -> Params:
        """Empty amax histories: `[L, 3, history]` per layer weight, `[3, history]` for the head."""
        hist = (numerics.FP8_ROWS, policy.amax_history)
        return {"layers": {w: jnp.zeros((self.spec.n_layers, *hist), jnp.float32) for w in LINEAR_WEIGHTS},
                "head": jnp.zeros(hist, jnp.float32)}

    def with_fp8(self, params: Params, meta: Params | None) -> Params:
        """The parameters as the model reads them: fp8 metadata next to the weights it scales (the
        layer stack's slices then travel through the scan together)."""
        if meta is None:
            return params
        return {**params, "layers": {**params["layers"], "fp8": meta["layers"]}, "fp8": {"head": meta["head"]}}

