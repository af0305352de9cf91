"""Starting JAX on the emulated mesh's CPU devices: the process's device count, the XLA flags, and
joining the other processes of a multi-process run.

Both front ends start JAX through this module: the `rainier` commands (cli/common.py re-exports
`start_jax` for them) and a user's own script through `rj.emulate()` (rainier_jax/api/emulate.py).
With tests/conftest.py it is the only code that sets the device count in `jax.config`. JAX reads
it, and XLA_FLAGS, when its backend starts — at the first `jax.devices()` or computation — and
never again, so everything here must run before that; `running_devices` tells whether it is
too late.
"""

from __future__ import annotations

from rainier_jax.config.errors import ConfigError

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


def running_devices() -> int | None:
    """How many devices JAX's backend has (all processes' together) if it has started already;
    None while the device count can still be set. Imports JAX only when something else has (an
    unimported JAX has not started)."""
    import sys
    if "jax" not in sys.modules:
        return None
    # A private jax module, as public JAX has no "has the backend started" question (it would
    # start the backend to answer): the same test jax.config applies before it lets
    # jax_num_cpu_devices change.
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        return None
    import jax
    return len(jax.devices())


def start_jax(num_devices: int, cluster=None, topo=None) -> None:
    """Start JAX on `num_devices` emulated CPU devices; with a multi-process `cluster`
    (cluster.from_env) this process takes its share of `topo`'s ranks and joins the others.
    A JAX already started on exactly those devices is left as it is (a second call is a no-op);
    one started on other devices is a ConfigError."""
    running = running_devices()
    if running is not None:
        if running != num_devices:
            raise ConfigError(f"needs {num_devices} CPU devices but JAX already has {running}; "
                              "run rainier in a fresh process")
        return
    set_xla_flags()
    import jax
    processes = cluster.num_processes if cluster is not None else 1
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_devices // processes)   # this process's share
    if processes > 1:
        from rainier_jax.dist import cluster as cluster_lib
        cluster_lib.start(cluster, topo)
    if len(jax.devices()) != num_devices:  # e.g. JAX_PLATFORMS or a plugin chose other devices
        raise ConfigError(f"needs {num_devices} CPU devices but JAX started with {len(jax.devices())}; "
                          "run rainier in a fresh process")
