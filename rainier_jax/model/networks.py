"""Which network serves which model spec (the seam's two sides, rainier_jax/model/seam.py)."""

from __future__ import annotations

from rainier_jax.model.seam import Network


def network(spec) -> Network:
    """The JAX side of a model spec."""
    from rainier_jax.spec.model import ModelConfig
    from rainier_jax.spec.own import OwnModel

    if isinstance(spec, ModelConfig):
        from rainier_jax.model.builtin import Llama
        return Llama(spec)
    if isinstance(spec, OwnModel):
        from rainier_jax.model.nnx_adapter import NnxNetwork
        return NnxNetwork.of(spec)
    raise TypeError(f"not a model spec: {type(spec).__name__}")
