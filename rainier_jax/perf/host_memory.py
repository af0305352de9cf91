"""Will an emulated run fit in this machine's memory? Asked before anything compiles.

Every emulated rank is a CPU device of this one process, so the host holds what every rank's HBM
would hold: the per-rank bytes of the performance model (`estimate.memory`, recipe `rainier`: the
program rainier runs — weights, gradients, optimizer state, saved activations, temporaries), times
the ranks this host emulates, plus a fixed allowance for the JAX runtime and the XLA compiler.
Compared with the kernel's MemAvailable less a margin; a run that cannot fit is refused in one
line naming both numbers, instead of compiling and dying with RESOURCE_EXHAUSTED.

Calibration (this machine, 2026-12-01): tiny on trn2-mini-8 (dp=8) is modelled at 0.40 GiB of
rank state plus the 1 GiB allowance; its peak RSS is 0.91 GiB. The model errs on the side of
caution for small models (fixed per-rank temporaries) and is exact for the state of large ones,
which is what decides whether they fit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rainier_jax.config.errors import ConfigError, setting

GiB = 2**30
# The JAX runtime, XLA's compiler and the Python process around them (0.55 GiB measured for tiny).
RUNTIME_BYTES = 1 * GiB
# Left free for the rest of the machine and for XLA's short-lived peaks during compilation.
MARGIN_BYTES = 1 * GiB


@dataclasses.dataclass(frozen=True)
class Need:
    what: str          # "the candidate dp=8", "the reference (one device)"
    ranks: int
    per_rank: int      # bytes

    @property
    def total(self) -> int:
        return self.ranks * self.per_rank


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable (the kernel's estimate of what can be allocated without swapping), or None
    where the kernel does not say (then nothing is refused)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def need(experiment, *, what: str, ranks: int | None = None, topology=None) -> Need:
    """Host bytes of one emulated program: `ranks` (default: all of the layout's) × the busiest
    rank's bytes (`topology` for a single-device experiment, which has none). A user's own model
    has no analytic activation model: its need is its state (weights, gradients, optimizer), which
    is what decides whether a large model fits (docs/OWN_MODEL.md)."""
    from rainier_jax.spec.own import OwnModel
    if isinstance(experiment.model, OwnModel):
        from rainier_jax.perf.state_bytes import state_bytes_per_rank
        run = experiment.run
        per_rank = sum(state_bytes_per_rank(experiment.model, experiment.layout, run.policy, zero1=run.zero1).values())
        return Need(what, experiment.layout.size if ranks is None else ranks, per_rank)
    from rainier_jax.perf.estimate import memory
    per_rank = memory(experiment, recipe="rainier", topology=topology).total
    return Need(what, experiment.layout.size if ranks is None else ranks, per_rank)


def check(needs: list[Need], *, subject: str, processes_here: int = 1, available: int | None = None,
          hint: str = f"use a smaller model ({setting('model')} tiny) or fewer ranks") -> int:
    """Refuse (ConfigError, one line) when the programs of `needs`, run by `processes_here`
    processes on this host, need more than MemAvailable less MARGIN_BYTES. Returns the bytes
    needed. `subject` and `hint` go into the message as they are: settings in them are marked
    (`config.errors.setting`), as `hint_for`'s are."""
    total = sum(n.total for n in needs) + processes_here * RUNTIME_BYTES
    free = available_bytes() if available is None else available
    if free is None or total <= free - MARGIN_BYTES:
        return total
    parts = "; ".join(f"{n.what}: {n.ranks} ranks × {n.per_rank / GiB:,.2f} GiB" for n in needs)
    raise ConfigError(f"{subject}: this run needs about {total / GiB:,.1f} GiB of host memory ({parts}; plus "
                      f"{processes_here * RUNTIME_BYTES / GiB:g} GiB for JAX) but this machine has "
                      f"{free / GiB:,.1f} GiB available, of which rainier leaves {MARGIN_BYTES / GiB:g} GiB free; "
                      f"{hint} — `rainier estimate` answers full-size questions without running them")


def hint_for(layout) -> str:
    """What would shrink the run: a smaller model, or — when dp replicates the state — a layout
    that splits it."""
    if layout.dp > 1:
        return (f"use a smaller model ({setting('model')} tiny), or split the state over the ranks instead of "
                f"replicating it (dp={layout.dp} holds {layout.dp} full copies; fsdp, tp and pp split it)")
    return f"use a smaller model ({setting('model')} tiny) or a mesh with fewer ranks"


def processes_on_this_host(cluster) -> tuple[int, float]:
    """(processes sharing this host, the fraction of the ranks they hold): every process of a
    loopback run (`rainier launch`), else this process and its own share."""
    if cluster.num_processes == 1:
        return 1, 1.0
    host = (cluster.coordinator or "").rpartition(":")[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        return cluster.num_processes, 1.0
    return 1, 1.0 / cluster.num_processes
