"""Published Trainium training runs (rainier_jax/reference/published_trn1_training.csv, copied
with its provenance) and the estimate of each with the run's own layout: the calibration and the
validation of the performance model (docs/PERFMODEL.md).

Assumptions, the same for every row (the source does not say): trn1.32xlarge nodes (800 Gbps EFA,
the slower of the two the table names); neuronx-distributed's recipe (`estimate` recipe `nxd`)
with selective activation checkpointing; "bf16-autocast-fp32-optimizer" is rainier's bf16-mixed
(fp32 master weights and Adam state, bf16 matmuls); microbatches = global batch ÷ (dp × micro batch).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from rainier_jax.perf.estimate import Estimate, estimate
from rainier_jax.parallel.experiment import resolve
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.spec.model import load_model
from rainier_jax.spec.run import RunConfig
from rainier_jax.hardware.topology import load_topology, with_nodes

CSV = Path(__file__).resolve().parent.parent / "reference" / "published_trn1_training.csv"
MESH = "trn1-instance"
PRECISION = {"bf16-autocast-fp32-optimizer": "bf16-mixed"}


@dataclasses.dataclass(frozen=True)
class PublishedRun:
    model: str
    nodes: int
    tp: int
    pp: int
    dp: int
    zero1: bool
    micro_batch: int
    global_batch: int
    seq_len: int
    precision: str
    seq_per_s: float
    published_mfu_pct: float | None
    neuron_release: str


def rows() -> list[PublishedRun]:
    with CSV.open() as f:
        lines = [line for line in f if not line.startswith("#")]
    out = []
    for r in csv.DictReader(lines):
        out.append(PublishedRun(
            r["model"], int(r["nodes"]), int(r["tp"]), int(r["pp"]), int(r["dp"]), r["zero1"] == "yes",
            int(r["micro_batch"]), int(r["global_batch"]), int(r["seq_len"]), r["precision"], float(r["seq_per_s"]),
            float(r["published_mfu_pct"]) if r["published_mfu_pct"] else None, r["neuron_release"]))
    return out


def row(model: str) -> PublishedRun:
    (found,) = [r for r in rows() if r.model == model]
    return found


def setup(r: PublishedRun):
    """The resolved experiment of a published run: its model, layout and run settings on trn1."""
    topo = with_nodes(load_topology(MESH), r.nodes)
    layout = ParallelLayout(dp=r.dp, tp=r.tp, pp=r.pp)
    run = RunConfig(batch=r.global_batch, seq=r.seq_len, precision=PRECISION[r.precision], remat="selective",
                    zero1=r.zero1, microbatches=r.global_batch // (r.dp * r.micro_batch))
    return resolve(topo, load_model(r.model), layout, run)


def predict(r: PublishedRun, **kwargs) -> Estimate:
    return estimate(setup(r), **kwargs)


def derive_compute() -> float:
    """The compute efficiency at which the calibration row's predicted step time equals the
    published one (perf/calibration.py): step = compute_at_peak / e + rest, solved for e. Everything
    else in the step (collectives, bubble) is independent of e."""
    from rainier_jax.perf import calibration
    r = row(calibration.CALIBRATION_ROW)
    e = predict(r)
    at_peak = e.compute_s * calibration.for_generation(e.topo.generation).compute   # the compute time at e = 1
    published_step = r.global_batch / r.seq_per_s
    rest = e.step_time_s - e.compute_s / (1 - e.bubble)
    return at_peak / ((published_step - rest) * (1 - e.bubble))
