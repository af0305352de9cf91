"""`rainier plan`: enumerate the layouts of a model on a topology, drop what does not fit or breaks
the topology rules, rank the rest by predicted throughput (the analytic model, `perf/estimate.py`).

The search space: every factorisation of the rank count into pp × dp × fsdp × tp the model's
shapes accept and the placement can lay out; ZeRO-1 on or off where dp > 1; remat full, selective
or none; microbatches (gradient accumulation with pp = 1, 1×–8× pp with a pipeline); and with a
pipeline the 1f1b, gpipe and interleaved (2 chunks per device) schedules. Tensor-parallel groups
and pipeline rings that are not rings of direct links (neuronx-distributed's rules,
`layout.layout_warnings`) are dropped. Memory is checked before anything is priced, which keeps
the sweep for a 70B model on 2,048 ranks well inside 30 s.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from rainier_jax.config.errors import ConfigError
from rainier_jax.perf.estimate import Estimate, estimate, memory
from rainier_jax.parallel.experiment import resolve
from rainier_jax.parallel.layout import ParallelLayout, factorisations
from rainier_jax.spec.model import ModelConfig
from rainier_jax.spec.run import REMAT, RunConfig
from rainier_jax.hardware.topology import Topology


@dataclasses.dataclass
class Ranking:
    """What `plan` found: the candidates that fit, fastest first, and what it dropped."""
    ranked: list[Estimate]            # fitting candidates, fastest first
    considered: int                   # (layout, settings) pairs looked at
    dropped: Counter                  # reason → count


def _settings(layout: ParallelLayout, cfg: ModelConfig, batch: int, seq: int, precision: str):
    """Run settings worth trying for one layout."""
    per_replica = batch // layout.data_size
    if layout.pp == 1:
        pipelines = [("1f1b", m, 1) for m in (1, 2, 4, 8, 16, 32) if per_replica % m == 0]
    else:
        pipelines = []
        for m in (layout.pp * k for k in (1, 2, 4, 8)):
            if per_replica % m:
                continue
            pipelines += [("1f1b", m, 1), ("gpipe", m, 1)]
            if cfg.n_layers % (layout.pp * 2) == 0 and m % layout.pp == 0:
                pipelines.append(("interleaved", m, 2))
    zero1 = (False, True) if layout.dp > 1 else (False,)
    for schedule, m, v in pipelines:
        for z in zero1:
            for remat in REMAT:
                yield RunConfig(batch=batch, seq=seq, precision=precision, microbatches=m, schedule=schedule,
                                virtual_stages=v, remat=remat, zero1=z)


def plan(cfg: ModelConfig, topo: Topology, *, batch: int, seq: int, precision: str,
         recipe: str = "nxd") -> Ranking:
    ranked: list[Estimate] = []
    dropped: Counter = Counter()
    considered = 0
    for layout in factorisations(topo.num_ranks):
        try:
            base = resolve(topo, cfg, layout, RunConfig(batch=batch, microbatches=1 if layout.pp == 1 else layout.pp))
        except ConfigError:
            dropped["the model's shapes, the batch or the mesh do not divide"] += 1
            continue
        if base.warnings():
            dropped["tp or pp groups are not rings of direct links (Neuron's rule)"] += 1
            continue
        for run in _settings(layout, cfg, batch, seq, precision):
            considered += 1
            try:
                experiment = base.with_run(run)
            except ConfigError:
                dropped["pipeline settings invalid for the model"] += 1
                continue
            if not memory(experiment, recipe=recipe).fits:
                dropped["does not fit in HBM"] += 1
                continue
            ranked.append(estimate(experiment, recipe=recipe))
    ranked.sort(key=lambda e: (-e.tokens_per_s, e.memory.total))   # ties: the one with more HBM to spare
    return Ranking(ranked, considered, dropped)


def breakdown(e: Estimate) -> dict[str, float]:
    """Seconds of a step by part: compute, bubble, and communication per parallel axis."""
    parts = {"compute": e.compute_s, "bubble": e.bubble_s}
    for axes, seconds in e.comm_by_axis().items():
        parts[f"{axes} comm"] = seconds
    return parts


def why(best: Estimate, other: Estimate, parts: int = 3) -> list[tuple[str, float]]:
    """The `parts` parts of the step (compute, bubble, comm per axis) whose time differs most
    between `best` and `other`: (part, seconds more (+) or less (−) in `best`)."""
    a, b = breakdown(best), breakdown(other)
    diffs = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in set(a) | set(b)}
    moves = sorted(((k, d) for k, d in diffs.items() if abs(d) > 1e-9 * other.step_time_s), key=lambda kd: -abs(kd[1]))
    return sorted(moves[:parts], key=lambda kd: kd[1])


def describe_settings(e: Estimate) -> str:
    r = e.run
    parts = [str(e.layout)]
    if e.layout.pp > 1:
        parts.append(f"{r.schedule}" + (f" V={r.virtual_stages}" if r.virtual_stages > 1 else "") + f" M={r.microbatches}")
    elif r.microbatches > 1:
        parts.append(f"accumulate M={r.microbatches}")
    parts.append(f"remat {r.remat}")
    if r.zero1:
        parts.append("ZeRO-1")
    return " · ".join(parts)
