"""Which model a checkpoint was trained with, and whether a resumed run's model is that one: the
built-in model's sizes, or a user's model file by path and sha256 (train/checkpoint/record.py
holds the rest of the run record)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.own import OwnModel

if TYPE_CHECKING:
    from rainier_jax.train.checkpoint.record import RunRecord


def model_record(model: ModelConfig | OwnModel) -> dict:
    """The built-in model's sizes; for a user's model file, where it is and its sha256 (a resumed
    run loads it again and refuses a changed file)."""
    if isinstance(model, OwnModel):
        return {"file": model.path, "factory": model.factory, "sha256": model.sha256}
    return dataclasses.asdict(model)



@dataclasses.dataclass(frozen=True)
class OwnModelRecord:
    """A user's model as a checkpoint keeps it (`model_record`)."""
    file: str
    factory: str
    sha256: str

    @property
    def argument(self) -> str:
        return f"{self.file}:{self.factory}"



def check_model(saved: RunRecord, model: ModelConfig | OwnModel, given_name: str | None, where: str) -> None:
    """Refuse a model whose dimensions differ from the saved one (its name alone may differ); a
    user's model file must be the one the run was trained with, byte for byte."""
    kept = saved.experiment.model
    fix = f"start a new {setting('checkpoint_dir')}"
    if isinstance(kept, OwnModelRecord) or isinstance(model, OwnModel):
        if not (isinstance(kept, OwnModelRecord) and isinstance(model, OwnModel)):
            was = kept.argument if isinstance(kept, OwnModelRecord) else f"the built-in {kept.name}"
            raise ConfigError(f"{setting('resume')}: {setting('model')} {given_name}: the checkpoint was trained "
                              f"with {was} ({where}); drop {setting('model')} to continue with it, or {fix}")
        if model.sha256 != kept.sha256:
            raise ConfigError(f"{setting('resume')}: {setting('model')} {model.path}: the file changed since the "
                              f"checkpoint was written (sha256 {model.sha256[:12]}, the checkpoint's "
                              f"{kept.sha256[:12]}) ({where}); restore the file the run was trained with, or {fix}")
        return
    before = dataclasses.asdict(kept)
    for key, value in dataclasses.asdict(model).items():
        if key != "name" and before.get(key) != value:
            raise ConfigError(f"{setting('resume')}: {setting('model')} {given_name}: {key} {value} differs from the "
                              f"checkpoint's {before.get(key)} ({where}); drop {setting('model')} to continue with "
                              f"{before['name']}, or start a new {setting('checkpoint_dir')}")
