"""The analytic performance model: HBM per rank, FLOPs, every collective priced on the topology,
pipeline bubble, step time and MFU for one (model, mesh, layout, run) — from dimensions alone, in
milliseconds, no JAX. `docs/PERFMODEL.md` states every formula and where each constant comes from.

Two **recipes** say which program is being estimated; they differ only in what crosses the links
and what is held:

* `nxd` (default) — the program a production Trainium stack (neuronx-distributed) runs for the
  layout: Megatron tensor parallelism with fused q/k/v and gate/up projections (2 all-reduces per
  layer forward, 2 backward), sequence parallelism (each all-reduce becomes a reduce-scatter plus
  an all-gather, the same ring time; saved layer inputs split over tp), flash attention (no T×T
  scores held), activations in the compute dtype, gradients accumulated locally over microbatches
  and reduced once per step, pipeline stages idle in the bubble.
* `rainier` — the program rainier's GSPMD train step sends, as read from its partitioned HLO
  (`tests/test_estimate.py` checks it against the compiled step): one tp all-reduce per
  column-parallel matmul input gradient (q, k, v, gate, up), the residual stream in fp32, and
  gradients reduced over the data axes every microbatch.

Time: step = compute / (1 − bubble) + Σ collectives, with no overlap of communication and
compute (a conservative choice; docs/PERFMODEL.md). Compute is the rank's matmul FLOPs (recompute
included) at the chip generation's peak times its calibrated efficiency (`perf/calibration.py`).
"""

from __future__ import annotations

import dataclasses

from rainier_jax.perf import calibration
from rainier_jax.perf import flops
from rainier_jax.parallel.experiment import Experiment
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.spec.model import ModelConfig
from rainier_jax.perf.state_bytes import state_bytes_per_rank
from rainier_jax.spec.precision import Policy
from rainier_jax.spec.run import RunConfig
from rainier_jax.hardware.topology import Topology
from rainier_jax.perf.traffic import FP32_BYTES, Comm, executor_ticks, kv_split, step_comms
from rainier_jax.spec.dtypes import itemsize

RECIPES = ("nxd", "rainier")
_DTYPE_KEY = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes on the busiest rank."""
    weights: int
    grads: int
    optimizer: int
    activations: int      # saved for the backward, over the microbatches in flight
    temporaries: int      # the working set of one layer's backward plus the logits
    capacity: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.temporaries

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


@dataclasses.dataclass(frozen=True)
class Estimate:
    model: ModelConfig
    topo: Topology
    layout: ParallelLayout
    run: RunConfig
    recipe: str
    memory: Memory
    model_flops: float            # per step, all ranks (the MFU numerator)
    rank_flops: float             # matmul FLOPs the busiest rank executes per step
    compute_s: float
    bubble: float
    comms: tuple[Comm, ...]
    step_time_s: float
    mfu: float
    peak_dtype: str
    idle_computed: bool = False   # the bubble is spent computing (counted in compute_s)

    @property
    def comm_s(self) -> float:
        return sum(c.seconds for c in self.comms)

    @property
    def bubble_s(self) -> float:
        if self.idle_computed:
            return 0.0
        return self.compute_s * self.bubble / (1 - self.bubble)

    @property
    def tokens_per_s(self) -> float:
        return self.run.batch * self.run.seq / self.step_time_s

    @property
    def seq_per_s(self) -> float:
        return self.run.batch / self.step_time_s

    def comm_by_axis(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self.comms:
            key = "×".join(c.axes)
            out[key] = out.get(key, 0.0) + c.seconds
        return out

    def as_json(self) -> dict:
        m = self.memory
        return {
            "model": self.model.name, "mesh": self.topo.name, "nodes": self.topo.nodes, "ranks": self.topo.num_ranks,
            "parallel": str(self.layout), "batch": self.run.batch, "seq": self.run.seq,
            "microbatches": self.run.microbatches, "schedule": self.run.schedule,
            "virtual_stages": self.run.virtual_stages, "precision": self.run.precision, "remat": self.run.remat,
            "zero1": self.run.zero1, "recipe": self.recipe,
            "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s, "seq_per_s": self.seq_per_s,
            "mfu": self.mfu, "hbm_per_rank_bytes": m.total, "hbm_capacity_bytes": m.capacity, "fits": m.fits,
            "hbm": {"weights": m.weights, "grads": m.grads, "optimizer": m.optimizer,
                    "activations": m.activations, "temporaries": m.temporaries},
            "model_flops_per_step": self.model_flops, "rank_flops_per_step": self.rank_flops,
            "compute_s": self.compute_s, "bubble": self.bubble, "bubble_s": self.bubble_s, "comm_s": self.comm_s,
            "peak_dtype": self.peak_dtype,
            "collectives": [{"what": c.what, "kind": c.kind, "axes": list(c.axes), "bytes": c.nbytes,
                             "runs": c.runs, "link": c.priced.link, "algorithm": c.priced.algorithm,
                             "group_size": c.priced.group_size, "seconds": c.seconds} for c in self.comms],
        }


# ---------------------------------------------------------------------------------------------
# The model


def _rank_flops(cfg: ModelConfig, layout: ParallelLayout, run: RunConfig, rows: int, recipe: str) -> float:
    """Matmul FLOPs of the busiest rank per step: the step's hardware FLOPs split over the ranks,
    plus the k/v projections every tp rank repeats when tp exceeds the kv heads. A causal flash
    attention kernel (`nxd`) skips the blocks above the diagonal: half of every T×T product."""
    if recipe == "rainier" and (layout.pp > 1 or run.microbatches > 1):
        return _executor_flops(cfg, layout, run)
    total = flops.hardware_flops(cfg, batch=run.batch, seq=run.seq, remat=run.remat) / layout.size
    if recipe == "nxd":
        dots = flops.layer_dots(cfg, run.seq)
        executed = 3 * dots.attention + {"full": dots.attention, "selective": dots.attention / 2, "none": 0}[run.remat]
        total -= executed / 2 * cfg.n_layers * run.batch * run.seq / layout.size
    if layout.tp > 1 and not kv_split(cfg, layout.tp):
        # Each rank computes k/v for the kv heads its query heads use: all G of them in rainier
        # (the kv weights are kept whole), one in nxd (kv heads replicated tp/G times).
        heads = cfg.n_kv_heads if recipe == "rainier" else 1
        kv = 2.0 * cfg.d_model * 2 * heads * cfg.head_dim                  # forward, per token per layer
        passes = 3 + (1 if run.remat == "full" else 0)                      # fwd, 2 bwd, recompute
        share = cfg.n_kv_heads / layout.tp / heads                          # what hardware_flops counted
        total += kv * (1 - share) * passes * cfg.n_layers / layout.pp * rows * run.seq
    return total


def _executor_flops(cfg: ModelConfig, layout: ParallelLayout, run: RunConfig) -> float:
    """Matmul FLOPs one rank executes in rainier's pipeline executor (parallel/pipeline.py): every tick with
    a forward anywhere runs a chunk forward on every device; every tick with a backward runs the
    chunk's forward again under `jax.vjp`, the remat recompute inside it, the two backward
    matmuls, and the head with its loss (forward and backward) — idle slots included. Exact for
    gradient accumulation (pp = 1); with a pipeline XLA shares or drops some of this work, and
    the compiled step's dot FLOPs differ by up to about 12 % (docs/PERFMODEL.md)."""
    tp, T = layout.tp, run.seq
    tok = run.batch // (layout.data_size * run.microbatches) * T
    dots = flops.layer_dots(cfg, T)
    kv = 2.0 * cfg.d_model * 2 * cfg.n_kv_heads * cfg.head_dim
    layer = (dots.total - kv) / tp + kv / (tp if kv_split(cfg, tp) else 1)
    recompute = {"full": layer - dots.down / tp, "selective": dots.attention / 2 / tp, "none": 0.0}[run.remat]
    head = flops.head_dots(cfg) / tp
    chunk = cfg.n_layers // (layout.pp * run.virtual_stages)
    f_ticks, b_ticks, _ = executor_ticks(run, layout.pp)
    # With one stage the forward tick's output is never sent, so XLA drops its layers.
    forward = f_ticks * chunk * layer if layout.pp > 1 else 0.0
    return tok * (forward + b_ticks * (chunk * (3 * layer + recompute) + 3 * head))


def _memory(cfg: ModelConfig, topo: Topology, layout: ParallelLayout, run: RunConfig, policy: Policy,
            recipe: str, in_flight: int) -> Memory:
    state = state_bytes_per_rank(cfg, layout, policy, zero1=run.zero1)
    D, H, G, K, F, V = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size)
    tp, T = layout.tp, run.seq
    mb = run.batch // (layout.data_size * run.microbatches)
    tok = mb * T
    act = itemsize(policy.compute_dtype)
    resid = act if recipe == "nxd" else FP32_BYTES   # rainier keeps the residual stream in fp32
    g = G // tp if kv_split(cfg, tp) else G
    sp = tp if recipe == "nxd" else 1               # sequence parallelism splits [T, D] tensors
    scores = 0 if recipe == "nxd" else 2 * (H // tp) * T * T * FP32_BYTES   # fp32 scores and probabilities
    # One layer's intermediates on one microbatch: normed inputs, q/k/v, attention output,
    # residual, gate/up/product, and (without flash attention) the scores.
    full_layer = tok * (2 * D * resid // sp + (H + 2 * g) * K // tp * act + H * K // tp * act
                        + D * resid // sp + 3 * F // tp * act) + mb * scores
    saved = {"full": tok * D * resid // sp,
             "selective": tok * (D * resid // sp + (H + 2 * g) * K // tp * act + H * K // tp * act
                                 + D * resid // sp + 2 * F // tp * act),
             "none": full_layer}[run.remat]
    layers_held = cfg.n_layers // layout.pp
    activations = saved * layers_held * in_flight
    # Working set: one layer's intermediates and their gradients during its backward, plus the
    # fp32 logits and their gradient for the microbatch (vocabulary split over tp).
    temporaries = 2 * full_layer + 2 * tok * (V // tp) * FP32_BYTES
    return Memory(state["weights"], state["grads"], state["optimizer"], int(activations), int(temporaries),
                  topo.hbm_bytes_per_rank)


def memory(experiment: Experiment, *, recipe: str = "nxd", topology: Topology | None = None) -> Memory:
    """HBM of the busiest rank: a pipeline's first stage holds the schedule's peak of microbatch-
    chunks in flight (each 1/V of the stage's layers); otherwise one microbatch at a time.
    `topology` gives the HBM capacity of a single-device experiment (which has none)."""
    cfg, layout, run = experiment.model, experiment.layout, experiment.run
    topo = topology or experiment.topology
    in_flight = max(experiment.schedule.peak_in_flight()) / run.virtual_stages if layout.pp > 1 else 1
    return _memory(cfg, topo, layout, run, run.policy, recipe, in_flight)


def estimate(experiment: Experiment, *, recipe: str = "nxd") -> Estimate:
    """The analytic estimate of a resolved experiment (parallel/experiment.py)."""
    cfg, topo, layout, run = experiment.model, experiment.topology, experiment.layout, experiment.run
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: one of {', '.join(RECIPES)}")
    if recipe == "rainier" and cfg.arch != "llama":
        raise ValueError(f"recipe rainier: rainier builds llama-type programs only, not {cfg.arch}; use recipe nxd")
    policy = run.policy
    eff = calibration.for_generation(topo.generation)
    peak_dtype = "fp8" if policy.fp8 else _DTYPE_KEY[policy.compute_dtype]
    peak = topo.peak_flops_per_rank.get(peak_dtype, topo.peak_flops_per_rank["bf16"])
    rows = run.batch // layout.data_size             # sequences one rank computes per step
    rank_flops = _rank_flops(cfg, layout, run, rows, recipe)
    compute_s = rank_flops / (peak * eff.compute)
    bubble = experiment.schedule.bubble() if layout.pp > 1 else 0.0
    mem = memory(experiment, recipe=recipe)
    comms = tuple(step_comms(experiment, recipe, eff.links))
    # rainier's executor computes in its idle slots, so its FLOP count already holds the bubble.
    idle_computed = recipe == "rainier" and (layout.pp > 1 or run.microbatches > 1)
    step = compute_s / (1 if idle_computed else 1 - bubble) + sum(c.seconds for c in comms)
    model = flops.model_flops(cfg, batch=run.batch, seq=run.seq)
    mfu = model / (step * topo.num_ranks * peak)
    return Estimate(cfg, topo, layout, run, recipe, mem, model, rank_flops, compute_s, bubble, comms, step,
                    mfu, peak_dtype, idle_computed)
