"""What crosses the links in a step: every collective of a recipe's program (perf/estimate.py's module
docstring describes the `nxd` and `rainier` recipes), with its executions per rank, priced on the
topology by `perf/collectives.py`. `tests/test_estimate.py` checks the `rainier` recipe against the
partitioned HLO of the real train step.
"""

from __future__ import annotations

import dataclasses

from rainier_jax.perf import collectives as comm
from rainier_jax.parallel.experiment import Experiment
from rainier_jax.parallel.placement import axis_groups
from rainier_jax.spec.dtypes import itemsize
from rainier_jax.spec.model import ModelConfig
from rainier_jax.perf.state_bytes import params_per_rank
from rainier_jax.spec.run import RunConfig
from rainier_jax.parallel.schedules import build_schedule, pack, segments
from rainier_jax.hardware.topology import Topology

FP32_BYTES = itemsize("float32")   # bytes of what rainier's program keeps in fp32 whatever the policy


@dataclasses.dataclass(frozen=True)
class Comm:
    """One family of identical collectives in a step."""
    what: str                 # e.g. "tp: layer activations"
    kind: str                 # collectives.KINDS
    axes: tuple[str, ...]     # parallel axes of the groups
    nbytes: int               # per rank per execution (the full buffer, as collectives.price takes it)
    runs: int                 # executions per step on one rank
    priced: comm.Priced

    @property
    def seconds(self) -> float:
        return self.runs * self.priced.seconds

    @property
    def total_bytes(self) -> int:
        return self.runs * self.nbytes


# ---------------------------------------------------------------------------------------------
# Geometry: the groups of each axis (or combination of axes) under the placement


def _price(topo: Topology, groups: tuple[tuple[int, ...], ...], kind: str, nbytes: int,
           efficiency: float) -> comm.Priced:
    """Every group of the axes runs the collective at once; pp permutes are priced on the ring of
    stages (each stage sends to the next)."""
    return comm.price(topo, kind, nbytes, groups[0], groups=groups, efficiency=efficiency)


# ---------------------------------------------------------------------------------------------
# The programs


def kv_split(cfg: ModelConfig, tp: int) -> bool:
    return cfg.n_kv_heads % tp == 0


def layer_weights(cfg: ModelConfig, tp: int) -> dict[str, int]:
    """Elements of one layer's matrices on one tensor-parallel shard (whole over fsdp)."""
    D, H, G, K, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
    if cfg.arch == "gpt2":
        return {"w_qkv": D * 3 * D // tp, "wo": D * D // tp, "w_up": D * F // tp, "w_down": F * D // tp}
    g = G // tp if kv_split(cfg, tp) else G
    return {"wq": D * H * K // tp, "wk": D * g * K, "wv": D * g * K, "wo": H * K * D // tp,
            "w_gate": D * F // tp, "w_up": D * F // tp, "w_down": F * D // tp}


def executor_ticks(run: RunConfig, pp: int) -> tuple[int, int, list]:
    """(ticks with a forward, ticks with a backward, runs of ticks) of rainier's pipeline executor."""
    runs = segments(pack(build_schedule(run.schedule, pp, run.microbatches, run.virtual_stages)))
    return (sum(b - a for a, b, f, _ in runs if f), sum(b - a for a, b, _, bw in runs if bw), runs)


class _Step:
    """What `_nxd_comms` and `_rainier_comms` share: sizes of the step and a list to add to."""

    def __init__(self, experiment: Experiment, recipe: str, eff: float):
        cfg, layout, run, policy = experiment.model, experiment.layout, experiment.run, experiment.policy
        self.cfg, self.topo, self.layout, self.run, self.eff = cfg, experiment.topology, layout, run, eff
        self.placement = experiment.placement
        self._groups: dict[tuple[str, ...], tuple[tuple[int, ...], ...]] = {}   # axes → their rank groups
        self.M = run.microbatches
        self.tok = run.batch // (layout.data_size * self.M) * run.seq      # tokens of one microbatch
        self.Lr = cfg.n_layers // layout.pp                                 # layers on one rank
        self.wbytes = policy.param_bytes                                    # weights at rest, gradients
        self.cbytes = itemsize(policy.compute_dtype)
        self.layer_w = layer_weights(cfg, layout.tp)
        self.vocab = cfg.vocab_size // layout.tp * cfg.d_model              # embedding (or head) elements per tp shard
        self.full = run.remat == "full"
        self.out: list[Comm] = []

    def add(self, what: str, kind: str, axes: tuple[str, ...], nbytes: float, runs: float) -> None:
        axes = tuple(a for a in axes if getattr(self.layout, a) > 1)
        if not axes or runs <= 0 or nbytes <= 0:
            return
        nbytes = int(nbytes)
        if axes not in self._groups:
            self._groups[axes] = tuple(map(tuple, axis_groups(self.placement, axes).tolist()))
        self.out.append(Comm(what, kind, axes, nbytes, int(runs),
                             _price(self.topo, self._groups[axes], kind, nbytes, self.eff)))


def _nxd_comms(s: _Step) -> None:
    """neuronx-distributed's program (module docstring): per microbatch, 2 tp collectives per layer
    forward and 2 backward (2 more when the whole layer is recomputed), in the compute dtype;
    gradients reduced once per step."""
    cfg, layout, run = s.cfg, s.layout, s.run
    A = s.tok * cfg.d_model * s.cbytes
    passes = s.M * s.Lr
    layer_bytes = sum(s.layer_w.values()) * s.wbytes
    s.add("tp: layer activations (sequence parallel: RS + AG)", "all-reduce", ("tp",), A,
          (4 + (2 if s.full else 0)) * passes)
    s.add("tp: embedding output, head input gradient", "all-reduce", ("tp",), A, 2 * s.M)
    s.add("fsdp: layer weights (forward, backward)", "all-gather", ("fsdp",), layer_bytes,
          (2 + (1 if s.full else 0)) * passes)
    s.add("fsdp: embedding and head weights", "all-gather", ("fsdp",), s.vocab * s.wbytes,
          s.M * (1 if cfg.tie_embeddings else 2))
    s.add("fsdp: layer gradients", "reduce-scatter", ("fsdp",), layer_bytes, s.Lr)
    grads = params_per_rank(cfg, layout) * s.wbytes
    if run.zero1:
        s.add("dp: gradients (ZeRO-1)", "reduce-scatter", ("dp",), grads, 1)
        s.add("dp: updated weights (ZeRO-1)", "all-gather", ("dp",), grads, 1)
    else:
        s.add("dp: gradient all-reduce", "all-reduce", ("dp",), grads, 1)
    # With sequence parallelism each tp rank sends only its slice of the sequence.
    s.add("pp: stage-to-stage activations, gradients", "collective-permute", ("pp",), A // layout.tp,
          2 * s.M * run.virtual_stages)


def _rainier_comms(s: _Step) -> None:
    """rainier's GSPMD program, as its partitioned HLO shows it (tests/test_estimate.py)."""
    cfg, layout, run = s.cfg, s.layout, s.run
    D, tp, fsdp = cfg.d_model, layout.tp, layout.fsdp
    A = s.tok * D * FP32_BYTES                          # the residual stream is fp32
    kv_heads_split = kv_split(cfg, tp)
    n_col = (3 if kv_heads_split else 1) + 2            # column-parallel matmuls with a partial input gradient
    matrices = sum(s.layer_w.values())
    head = 0 if cfg.tie_embeddings else s.vocab
    if layout.pp > 1 or s.M > 1:
        # The pipeline executor (parallel/pipeline.py) runs lock-step ticks: every tick with a forward
        # (backward) anywhere runs one chunk forward (backward) on every device, idle or not.
        # Its backward takes the VJP of the chunk from the stashed input: the chunk's forward
        # again (2 tp all-reduces and the weights per layer), the remat recompute (1), the
        # column-parallel input gradients; it also regathers the embedding for its VJP, and
        # every tick's gradients are reduced at once (the accumulators are not split over dp).
        f_ticks, b_ticks, runs = executor_ticks(run, layout.pp)
        # Each tick rolls the activation and the gradient sends around the pp ring, except the
        # activation roll of the runs after the last forward (its result is never read).
        last_f = max(i for i, r in enumerate(runs) if r[2])
        permutes = sum((stop - start) * (1 + (i <= last_f)) for i, (start, stop, _, _) in enumerate(runs))
        Lc = cfg.n_layers // (layout.pp * run.virtual_stages)
        fwd, bwd = f_ticks * Lc, b_ticks * Lc
        per_bwd_tp, per_bwd_gathers, regather_mlp = 3 + n_col, 2, True
        embeds, heads, embed_gathers = f_ticks, b_ticks, f_ticks + b_ticks
        # The embedding's gradient accumulator is split like the moments (over fsdp, and dp
        # with ZeRO-1), so every tick reduce-scatters into it.
        embed_grad = ("reduce-scatter" if fsdp > 1 or run.zero1 else "all-reduce", b_ticks)
    else:
        fwd = bwd = s.Lr
        per_bwd_tp, per_bwd_gathers, regather_mlp = (1 if s.full else 0) + n_col, 1, s.full
        embeds = heads = embed_gathers = 1
        embed_grad = ("all-reduce", 1)
    s.add("tp: layer activations (per column-parallel input grad)",
          "all-reduce", ("tp",), A, 2 * fwd + per_bwd_tp * bwd)
    s.add("tp: embedding output, head input gradient", "all-reduce", ("tp",), A, embeds + heads)
    s.add("tp: cross-entropy reductions", "all-reduce", ("tp",), s.tok * FP32_BYTES, 4 * heads)
    if tp > 1 and not kv_heads_split:
        s.add("tp: k/v weight gradients (kv heads whole)", "all-reduce", ("tp",),
              (s.layer_w["wk"] + s.layer_w["wv"]) * FP32_BYTES, bwd)
    # Layer weights are gathered in the compute dtype (cast before the gather); XLA shares the
    # attention weights' gathers between the recompute and the backward, not the gate/up ones.
    s.add("fsdp: layer weights", "all-gather", ("fsdp",), matrices * s.cbytes, fwd + per_bwd_gathers * bwd)
    if regather_mlp:
        s.add("fsdp: gate/up weights again (recompute)", "all-gather", ("fsdp",),
              (s.layer_w["w_gate"] + s.layer_w["w_up"]) * s.cbytes, bwd)
    s.add("fsdp: embedding and head weights", "all-gather", ("fsdp",), s.vocab * s.wbytes,
          embed_gathers + (heads if head else 0))
    s.add("fsdp: layer gradients", "reduce-scatter", ("fsdp",), matrices * s.wbytes, bwd)
    s.add("fsdp: head gradient", "reduce-scatter", ("fsdp",), head * s.wbytes, heads)
    # Weights split over fsdp are reduced over dp after their fsdp reduce-scatter; weights whole
    # over fsdp (norms; the embedding, whose gradient is a scatter-add) over dp and fsdp together.
    grad_kind = "reduce-scatter" if run.zero1 else "all-reduce"
    s.add("dp: layer weight gradients", grad_kind, ("dp",), matrices * s.wbytes // fsdp, bwd)
    s.add("dp: head gradient", grad_kind, ("dp",), head * s.wbytes // fsdp, heads)
    norms = ("dp",) if run.zero1 else ("dp", "fsdp")
    s.add("data axes: layer norm gradients", grad_kind, norms, 2 * D * s.wbytes, bwd)
    s.add("data axes: final norm gradient", grad_kind, norms, D * s.wbytes, heads)
    s.add("data axes: embedding gradient", embed_grad[0], ("dp", "fsdp"), s.vocab * s.wbytes, embed_grad[1])
    if run.zero1:
        s.add("dp: updated weights (ZeRO-1)", "all-gather", ("dp",),
              params_per_rank(cfg, layout) * s.wbytes, 1)
    if layout.pp > 1:
        # Stage boundaries carry the embedding's dtype: the compute dtype.
        s.add("pp: stage-to-stage activations, gradients", "collective-permute", ("pp",),
              s.tok * D * s.cbytes, permutes)
        # The per-stage accumulator of the weights outside the layer stack (one for the
        # embedding's and the head's gradients) is summed over pp: the embedding, the head, the
        # final norm. With ZeRO-1 it is summed after the dp reduce-scatter, on 1/dp of each.
        outside = (cfg.vocab_size * D * (1 if cfg.tie_embeddings else 2) // tp // fsdp + D) * FP32_BYTES
        outside //= layout.dp if run.zero1 else 1
        s.add("pp: embedding, head, final-norm gradients", "all-reduce", ("pp",), outside, 1)


def step_comms(experiment: Experiment, recipe: str, eff: float) -> list[Comm]:
    """Every collective family of one step of `recipe`'s program for `experiment` (its placement
    decides which links each group crosses), priced at link efficiency `eff`."""
    s = _Step(experiment, recipe, eff)
    (_nxd_comms if recipe == "nxd" else _rainier_comms)(s)
    return s.out
