"""Everything a layout, a model spec and the run settings must satisfy together, checked in one
place for every command (parallel/experiment.py's `resolve`) and for the layouts a search
admits (`placement.admissible_layouts`). No JAX."""

from __future__ import annotations

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.parallel.axis_rules import validate_split
from rainier_jax.parallel.layout import ParallelLayout, validate_all
from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.own import OwnModel
from rainier_jax.spec.precision import check_compatible
from rainier_jax.spec.run import RunConfig


def validate(layout: ParallelLayout, model: ModelConfig | OwnModel, run: RunConfig, *, setting: str = "parallel",
             precision_setting: str = "precision", defaulted: frozenset[str] = frozenset()) -> None:
    """Everything the layout, the model and the run settings must satisfy together. A user's
    model is asked first what only it can refuse (stages for a pipeline, the presets it runs):
    "pp=2 needs stages" says more than "1 layer does not split into 2 chunks"."""
    if isinstance(model, OwnModel):
        if layout.pp > 1 and not model.pipeline:
            raise ConfigError(f"{marked(setting)} {layout}: pp={layout.pp} needs a model that splits into stages — "
                              f"`embed(tokens)`, an nnx.vmap-stacked `blocks` with a leading 'layers' axis, "
                              f"and `head(x)` (docs/OWN_MODEL.md); {model.factory} does not "
                              f"({model.pipeline_problem or 'no such split'}): use pp=1")
        problem = model.precision_problem(run.policy, precision_setting)
        if problem:
            raise ConfigError(problem)
        validate_split(layout, model, setting=setting)
    validate_all(layout, model, run, setting=setting, defaulted=defaulted)
    check_compatible(run.policy, pp=layout.pp, microbatches=run.microbatches, setting=precision_setting)
