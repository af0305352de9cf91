"""Which process of how many this is, and starting JAX's multi-controller runtime for it.

A run is one process unless the environment says otherwise:

* `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` — set by `rainier launch`, or
  by hand / a job script on a cluster: all three or none;
* otherwise a scheduler's task variables (Slurm's `SLURM_NTASKS`/`SLURM_PROCID`, Open MPI's
  `OMPI_COMM_WORLD_SIZE`/`OMPI_COMM_WORLD_RANK`) with more than one task: the process count and
  index come from them and JAX's own cluster detection finds the coordinator.

Every process owns whole emulated instances: process k holds ranks k·R/N … (k+1)·R/N − 1 (rank
numbers put the instance, then the node, in the slowest digits), so the instance boundary is the
process boundary. Collectives between processes go over gloo, JAX's CPU default.

Failure: JAX's defaults would let a survivor wait 100 s for a dead peer's heartbeat and 300 s at
the shutdown barrier; `HEARTBEAT_S` and `SHUTDOWN_S` are set far lower so that a lost process
ends the others in seconds. When the heartbeat runs out, JAX's coordination client aborts the
process (SIGABRT, a C++ stack trace; its callback cannot be replaced from Python in this jaxlib),
so under `rainier launch` the survivors are ended before that: the launcher names the failed
process and sends SIGTERM, and dist/stopping.py ends them at once with one line. The launcher also
runs the coordination service itself (`SERVICE_ENV`), which JAX would start in process 0: when
process 0 dies, the others then lose nothing but a peer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys

from rainier_jax.dist import stopping
from rainier_jax.config.errors import ConfigError

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
SCHEDULERS = (("SLURM_NTASKS", "SLURM_PROCID"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"))
HEARTBEAT_S = 10
SHUTDOWN_S = 10
INIT_S = 120
# Set by `rainier launch`: the launcher runs JAX's coordination service, so process 0 does not.
SERVICE_ENV = "RAINIER_LAUNCH_SERVICE"


@dataclasses.dataclass(frozen=True)
class Cluster:
    coordinator: str | None     # host:port; None → JAX's cluster detection finds it
    num_processes: int
    process_id: int
    source: str                 # where the settings came from, for messages

    @property
    def primary(self) -> bool:
        return self.process_id == 0


SINGLE = Cluster(None, 1, 0, "one process")


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: must be an integer") from None


def from_env(environ=None) -> Cluster:
    """The cluster the environment describes (module docstring); SINGLE when it describes none.
    Inconsistent settings are a ConfigError naming the variable."""
    env = os.environ if environ is None else environ
    given = [k for k in ENV if env.get(k)]
    if given:
        missing = [k for k in ENV if k not in given]
        if missing:
            raise ConfigError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
                              f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: set all three "
                              "(or none, for one process)")
        address = env["JAX_COORDINATOR_ADDRESS"]
        m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):(\d{1,5})", address)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise ConfigError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected HOST:PORT, e.g. 127.0.0.1:12345")
        n = _int("JAX_NUM_PROCESSES", env["JAX_NUM_PROCESSES"])
        k = _int("JAX_PROCESS_ID", env["JAX_PROCESS_ID"])
        source = "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID"
        coordinator = address
    else:
        for size_var, rank_var in SCHEDULERS:
            if env.get(size_var) and _int(size_var, env[size_var]) > 1:
                if not env.get(rank_var):
                    raise ConfigError(f"{size_var}={env[size_var]} is set but {rank_var} is not")
                n, k = _int(size_var, env[size_var]), _int(rank_var, env[rank_var])
                source, coordinator = f"{size_var}, {rank_var} (JAX finds the coordinator)", None
                break
        else:
            return SINGLE
    count_var = "JAX_NUM_PROCESSES" if given else size_var
    if n < 1:
        raise ConfigError(f"{count_var}={n}: must be at least 1")
    if not 0 <= k < n:
        raise ConfigError(f"process id {k} (from {source}) is outside 0 … {n - 1} for {n} processes")
    return Cluster(coordinator, n, k, source)


def check_topology(cluster: Cluster, topo, *, subject: str | None = None) -> None:
    """Every process must own whole instances of the mesh. `subject` leads the message in place of
    "N processes (from SOURCE)", e.g. a marked setting and its value."""
    instances = topo.instances * topo.nodes
    if instances % cluster.num_processes:
        what = subject or f"{cluster.num_processes} processes (from {cluster.source})"
        options = [d for d in range(1, instances + 1) if instances % d == 0]
        raise ConfigError(f"{what}: {cluster.num_processes} processes cannot each own whole instances of "
                          f"{topo.name} ({instances} instances); use {', '.join(map(str, options))} processes")


def local_ranks(cluster: Cluster, topo) -> range:
    per = topo.num_ranks // cluster.num_processes
    return range(cluster.process_id * per, (cluster.process_id + 1) * per)


def start(cluster: Cluster, topo) -> None:
    """Join the cluster (the caller has set this process's CPU device count: its share of the
    topology's ranks); then check that JAX's global device order puts this process's devices at
    its ranks."""
    import jax

    if cluster.num_processes == 1:
        return
    kwargs = dict(heartbeat_timeout_seconds=HEARTBEAT_S, shutdown_timeout_seconds=SHUTDOWN_S,
                  initialization_timeout=INIT_S)
    if cluster.coordinator is not None:
        kwargs.update(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                      process_id=cluster.process_id)
    if cluster.primary and os.environ.get(SERVICE_ENV) == "1":
        with _service_elsewhere():
            jax.distributed.initialize(**kwargs)
    else:
        jax.distributed.initialize(**kwargs)
    # The distributed runtime installs a SIGTERM handler that only logs the signal (preemption
    # notices). dist/stopping.py's replaces it for the rest of the process: a run without checkpoints
    # (parity, train without --checkpoint-dir) ends on SIGTERM as one process does, train's
    # checkpoint session stops after a step, and after another process failed this one ends at
    # once instead of waiting in a collective until JAX aborts it.
    stopping.install(cluster.num_processes)
    sys.excepthook = stopping.excepthook_for_processes(sys.excepthook)
    if jax.process_count() != cluster.num_processes or jax.process_index() != cluster.process_id:
        raise ConfigError(f"JAX joined as process {jax.process_index()} of {jax.process_count()}, but "
                          f"{cluster.source} say {cluster.process_id} of {cluster.num_processes}")
    mine = [i for i, d in enumerate(jax.devices()) if d.process_index == cluster.process_id]
    if mine != list(local_ranks(cluster, topo)):
        raise RuntimeError(f"process {cluster.process_id}: JAX placed its devices at global positions "
                           f"{mine[:4]}…, not at ranks {local_ranks(cluster, topo)}")


@contextlib.contextmanager
def _service_elsewhere():
    """`jax.distributed.initialize` in process 0 without starting JAX's coordination service:
    `rainier launch` runs it. jax (0.10) starts it in process 0 through this private jaxlib
    entry point, and skips shutting it down when there is none."""
    from jax._src import distributed

    start_service = distributed._jax.get_distributed_runtime_service
    distributed._jax.get_distributed_runtime_service = lambda *args, **kwargs: None
    try:
        yield
    finally:
        distributed._jax.get_distributed_runtime_service = start_service


def agreed(local_flag, cluster: Cluster):
    """`local_flag` (e.g. "a SIGTERM arrived") made collective: true on every process as soon as
    it is true on any. Processes must stop after the same step — one that stopped alone would
    leave the others waiting in the next step's collectives. One small all-gather per step, and
    only with several processes."""
    if cluster.num_processes == 1:
        return local_flag

    def check() -> bool:
        import numpy as np
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.array(bool(local_flag())))))

    return check
