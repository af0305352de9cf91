"""Which model a command runs: a built-in name, a model TOML, a Hugging Face config.json (all
read without JAX), or a user's Flax NNX model file `FILE.py:FACTORY` (docs/OWN_MODEL.md), which
needs JAX to be built — so for that one JAX starts first, still before anything compiles."""

from __future__ import annotations

import math

from rainier_jax.cli.common import DEFAULT_MODEL, check_only, start_jax
from rainier_jax.spec.model import leaves_with_paths
from rainier_jax.spec.own import OwnModel, is_model_file


def model_for(args, found, run, topo, cluster=None, *, setting: str = "model"):
    """(model spec, whether JAX was started) for `args.model`, or — resuming with no model given —
    the checkpoint's (`found`). `run` gives the sequence length a model file's output is checked
    at."""
    from rainier_jax.train.checkpoint.model_record import OwnModelRecord

    kept = found.record.experiment.model if found is not None else None
    text = getattr(args, setting)
    if text is None and isinstance(kept, OwnModelRecord):
        text = kept.argument
    if is_model_file(text):
        # `rainier launch`'s dry run is one process: it builds the model on all ranks alone.
        start_jax(topo.num_ranks, None if check_only() else cluster, topo)
        from rainier_jax.model.nnx_adapter import load_own_model
        return load_own_model(text, seq=run.seq, setting=setting), True
    from rainier_jax.spec.model import load_model, require_trainable
    model = kept if text is None and kept is not None else load_model(text or DEFAULT_MODEL, setting=setting)
    require_trainable(model, setting)
    return model, False


def replicated_note(model) -> str | None:
    """For a user's model: how much of it has no logical axis names, so every rank holds all of it."""
    if not isinstance(model, OwnModel):
        return None
    shapes = dict(leaves_with_paths(model.param_shapes()))
    unnamed = model.unnamed()
    if not unnamed:
        return None
    n = sum(math.prod(shapes[p]) for p in unnamed)
    tensors = f"{len(unnamed)} parameter tensor{'s' * (len(unnamed) > 1)}"
    return (f"note: {tensors} ({n:,} parameters, {4 * n:,} bytes in fp32; first: {unnamed[0]}) "
            f"{'carry' if len(unnamed) > 1 else 'carries'} no logical axis names and "
            f"{'are' if len(unnamed) > 1 else 'is'} replicated on every rank (docs/OWN_MODEL.md)")

