"""What the `rainier` subcommands share: defaults, reading run settings from flags, output
directories, and starting JAX on the right number of emulated devices (the only place that
touches `jax.config`, with tests/conftest.py)."""

from __future__ import annotations

import dataclasses

from rainier_jax.config.errors import ConfigError

DEFAULT_MESH = "trn2-mini-8"
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


# XLA:CPU's "platform-dependent math" computes sqrt, division and transcendental functions with
# vector approximations whose last bit depends on where an element falls in a vector; a tensor
# split over ranks then rounds differently from the same tensor whole (ZeRO-1's Adam update was
# 1 ulp off on some elements on an AMD EPYC host, bitwise on others). Off, every element is
# computed the same way whatever the layout; no throughput change measured (4.2–4.3k tok/s).
XLA_FLAGS = ("--xla_cpu_enable_platform_dependent_math=false",)


def set_xla_flags(environ=None) -> None:
    """Add XLA_FLAGS to the environment's XLA_FLAGS (read when JAX starts its backend), keeping
    any the user set."""
    import os
    environ = os.environ if environ is None else environ
    current = environ.get("XLA_FLAGS", "")
    extra = [f for f in XLA_FLAGS if f.split("=")[0] not in current]
    if extra:
        environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


def start_jax(num_devices: int, cluster=None, topo=None) -> None:
    """Start JAX on `num_devices` emulated CPU devices; with a multi-process `cluster`
    (cluster.from_env) this process takes its share of `topo`'s ranks and joins the others."""
    set_xla_flags()
    import jax
    processes = cluster.num_processes if cluster is not None else 1
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_devices // processes)   # this process's share
    if processes > 1:
        from rainier_jax.dist import cluster as cluster_lib
        cluster_lib.start(cluster, topo)
    if len(jax.devices()) != num_devices:  # JAX was started before the CLI could size it
        raise ConfigError(f"needs {num_devices} CPU devices but JAX already has {len(jax.devices())}; "
                          "run rainier in a fresh process")
