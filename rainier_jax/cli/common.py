"""What the `rainier` subcommands share: defaults, reading run settings from flags, output
directories, and starting JAX on the right number of emulated devices (`start_jax`, from
rainier_jax/dist/startup.py, which `rj.emulate()` starts JAX through too)."""

from __future__ import annotations

import dataclasses

from rainier_jax.config.errors import ConfigError
from rainier_jax.dist.startup import start_jax  # noqa: F401 (the commands start JAX through it)
from rainier_jax.hardware.topology import DEFAULT_MESH  # noqa: F401 (the commands' default)

# Set by `rainier launch` for a dry run of the command it wraps: validate everything, stop before
# JAX starts (exit 0 when valid), so bad input is reported once rather than by every process.
CHECK_ONLY_ENV = "RAINIER_CHECK_ONLY"
DEFAULT_MODEL = "tiny"


def check_only() -> bool:
    """True in `rainier launch`'s dry run (CHECK_ONLY_ENV)."""
    import os
    return os.environ.get(CHECK_ONLY_ENV) == "1"

def run_settings(args) -> tuple[str, ...]:
    """The run settings (RunConfig's fields) the command has flags for (its parser's table,
    cli/flags.py)."""
    from rainier_jax.spec.run import RunConfig
    return tuple(f.name for f in dataclasses.fields(RunConfig) if f.name in getattr(args, "flags", {}))


def given(args, names) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def defaulted(args, base: dict | None = None) -> frozenset[str]:
    """The run settings that hold RunConfig's default: neither given as a flag nor taken from a
    resumed run's record (error messages say "(the default)" for those)."""
    return frozenset(k for k in run_settings(args) if getattr(args, k, None) is None and k not in (base or {}))


def run_config(args, base: dict | None = None):
    """RunConfig from the flags given, over `base` (a resumed run's saved settings) or the defaults."""
    from rainier_jax.spec.run import RunConfig
    try:
        return RunConfig(**{**(base or {}), **given(args, run_settings(args))})
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def writable_dir(path: str, flag: str = "--report"):
    from pathlib import Path
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory; give a directory path")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".rainier-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write there ({e.strerror}); give a writable directory") from None
    return d
