"""The parity harness: does a layout compute what the reference computes?

Two comparisons, from one set of initial parameters (initialised once by the reference and
resharded into the candidate's layout) and the same batches:

* **lock-step** (the verdict): at every step both programs take loss and gradients at the
  *reference's* parameters, so differences cannot compound. Every gradient tensor — stacked layer
  tensors split per layer — is compared with its bound.
* **free-running** (information): each program updates its own parameters with its own optimizer;
  loss curves and final parameters are reported against a looser, empirical bound, because Adam
  turns a sign flip of a near-zero gradient into a parameter difference of up to 2·lr.

Bounds (docs/PARITY.md has the measurements): a layout only reorders sums, so each rounding
contributes O(eps) relative error, and backpropagation through `d` layers can amplify it by a
factor per layer. The bound on a tensor's relative L2 error is therefore

    rel_l2 ≤ k · C^d · eps(dtype)

with depth d = L − l for layer l of L (0-based), L + 1 for the embedding and for the loss, 0 for
the head and final norm. k and C were set once from known-good layouts (`K`, `C` below). Identical
layouts get the bound 0: CPU fp32 is deterministic, so they must agree bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import numpy as np

from rainier_jax.train import data as data_lib
from rainier_jax.dist.arrays import host_copy, local_value, to_devices
from rainier_jax.spec.precision import Policy
from rainier_jax.train.loop import Program

# Set once from known-good layouts (docs/PARITY.md): over 7 layouts of trn2-mini-8, two batch
# shapes, 4 steps and every tensor and layer, the worst rel_l2 / (C^d·eps) was 15.8 with C = 1.1
# (the measured errors barely grow with depth; C keeps room for deeper models). K = 4 × 15.8.
K = 64.0
C = 1.1
EPS32 = float(np.finfo(np.float32).eps)
# Free-running bound (information, not verdict): relative loss difference after Adam updates,
# 100× the worst measured (7.5e-6 over the same runs).
FREE_LOSS_RTOL = 1e-3


# Low-precision bound (docs/PRECISION.md): roundings per block on a forward or backward path,
# counted in model.llama.block (norm output, q/k/v, rope, probabilities, attention output, its
# projection, the MLP's gate·up product and down projection), and the margin in standard deviations.
ROUNDINGS_PER_BLOCK = 8
LOWP_MARGIN = 4.0


@dataclasses.dataclass(frozen=True)
class Bound:
    """What counts as agreement, and how it was arrived at (recorded in the report)."""
    kind: str            # "bitwise", "derived", "derived-lowp" or "override"
    eps: float           # fp32 kinds: machine epsilon; derived-lowp: the effective unit roundoff
    k: float = K
    c: float = C
    override: float | None = None
    layers: int = 0      # derived-lowp: the model's depth L

    @classmethod
    def for_precisions(cls, ref: Policy, cand: Policy, *, n_layers: int, identical: bool) -> "Bound":
        """The bound for comparing `cand` with `ref`: bitwise when both are the same computation;
        fp32's reordering bound when both are fp32; otherwise the low-precision rounding bound
        with the two policies' rounding errors independent (root sum of squares of their units)."""
        if identical:
            return cls("bitwise", EPS32)
        u = math.hypot(ref.rounding_unit, cand.rounding_unit)
        if u == 0.0:
            return cls("derived", EPS32)
        return cls("derived-lowp", u, layers=n_layers)

    def limit(self, depth: int) -> float:
        if self.kind == "bitwise":
            return 0.0
        if self.kind == "override":
            return float(self.override)
        if self.kind == "derived-lowp":
            # n = R·(L + 1 + d) roundings lie between the inputs and a tensor at depth d (the whole
            # forward pass and loss, then d blocks of backward pass), each a relative error uniform
            # in ±u (RMS u/√3) with random sign: RMS total u·√(n/3), amplified C^d, with margin.
            n = ROUNDINGS_PER_BLOCK * (self.layers + 1 + depth)
            return LOWP_MARGIN * self.c ** depth * self.eps * math.sqrt(n / 3)
        return self.k * self.c ** depth * self.eps

    def describe(self) -> str:
        if self.kind == "bitwise":
            return "bitwise: reference and candidate are the same layout and precision, so fp32 on CPU must agree exactly"
        if self.kind == "override":
            return f"override: --tolerance {self.override:g} on every tensor's relative L2 error and the loss"
        if self.kind == "derived-lowp":
            return (f"derived-lowp: rel_l2 <= {LOWP_MARGIN:g} * C^depth * u * sqrt({ROUNDINGS_PER_BLOCK} * (L+1+depth) / 3) "
                    f"with u={self.eps:.3g} (effective unit roundoff of the two precisions), C={self.c:g}, L={self.layers}")
        return (f"derived: rel_l2 <= k * C^depth * eps with k={self.k:g}, C={self.c:g}, eps={self.eps:.3g}; "
                f"depth = L - l for layer l (0-based) of L, L+1 for the embedding and the loss, "
                f"0 for head and final norm")


@dataclasses.dataclass(frozen=True)
class TensorError:
    path: str
    depth: int
    step: int            # the step at which this tensor was worst
    rel_l2: float
    max_abs: float
    limit: float
    limit_on: str = "rel_l2"   # which of the two errors `limit` bounds

    @property
    def bounded(self) -> float:
        return getattr(self, self.limit_on)

    @property
    def ok(self) -> bool:
        return self.bounded <= self.limit

    @property
    def ratio(self) -> float:
        return self.bounded / self.limit if self.limit > 0 else (0.0 if self.bounded == 0 else math.inf)


@dataclasses.dataclass
class ParityResult:
    reference: str
    candidate: str
    bound: Bound
    loss_ref: list[float]            # lock-step losses (at the reference's parameters)
    loss_cand: list[float]
    loss_limit: float
    tensors: list[TensorError]       # worst over steps, one per tensor (per layer), worst first
    free_loss_ref: list[float]       # free-running: each run's own losses
    free_loss_cand: list[float]
    free_params: list[TensorError]   # final parameters, free-running; limit on max_abs: 2·Σ lr

    @property
    def loss_violations(self) -> list[int]:
        return [i + 1 for i, (r, c) in enumerate(zip(self.loss_ref, self.loss_cand))
                if abs(r - c) > self.loss_limit * abs(r)]

    @property
    def first_violation(self) -> str | None:
        steps = self.loss_violations
        if steps:
            i = steps[0] - 1
            rel = abs(self.loss_ref[i] - self.loss_cand[i]) / abs(self.loss_ref[i])
            return f"loss at step {steps[0]}: relative error {rel:.3g} > limit {self.loss_limit:.3g}"
        bad = [t for t in self.tensors if not t.ok]
        if bad:
            t = bad[0]
            return (f"gradient {t.path} at step {t.step}: rel_l2 {t.rel_l2:.3g} > limit {t.limit:.3g} "
                    f"(max_abs {t.max_abs:.3g})")
        return None

    @property
    def passed(self) -> bool:
        return self.first_violation is None

    @property
    def free_ok(self) -> bool:
        return (all(abs(r - c) <= FREE_LOSS_RTOL * abs(r) for r, c in zip(self.free_loss_ref, self.free_loss_cand))
                and all(t.ok for t in self.free_params))


def tensor_depths(tree: dict, model) -> dict[str, tuple[np.ndarray, int]]:
    """Flatten a parameter-shaped tree into {path: (array, depth)}, stacked layers split per layer.
    The model spec says where its parameters sit (`stack`, `outer_depth`)."""
    stack, n_layers = model.stack, model.n_layers
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(p.key) for p in path]
        arr = np.asarray(leaf, dtype=np.float64)
        if keys[0] == stack:
            for layer in range(arr.shape[0]):
                out[f"{stack}/{'/'.join(keys[1:])}[{layer}]"] = (arr[layer], n_layers - layer)
        else:
            out["/".join(keys)] = (arr, model.outer_depth(keys[0]))
    return out


def compare(ref_tree, cand_tree, model, limit: Callable[[int], float], step: int,
            limit_on: str = "rel_l2") -> list[TensorError]:
    ref = tensor_depths(ref_tree, model)
    cand = tensor_depths(cand_tree, model)
    errors = []
    for path, (r, depth) in ref.items():
        c = cand[path][0]
        diff = c - r
        norm = np.linalg.norm(r)
        rel = float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff))
        errors.append(TensorError(path, depth, step, rel, float(np.max(np.abs(diff))), limit(depth), limit_on))
    return errors


def _worst(errors: list[TensorError]) -> list[TensorError]:
    """One entry per path (its worst step), sorted worst first by its ratio to the limit."""
    by_path: dict[str, TensorError] = {}
    for e in errors:
        if e.path not in by_path or e.rel_l2 > by_path[e.path].rel_l2:
            by_path[e.path] = e
    return sorted(by_path.values(), key=lambda e: (-e.ratio, -e.bounded, e.path))


def _cast_like(host_tree, like_tree):
    return jax.tree.map(lambda x, like: np.asarray(x).astype(like.dtype), host_tree, like_tree)


def run_parity(ref: Program, cand: Program, corpus: data_lib.Corpus, *, bound: Bound,
               reference_name: str, candidate_name: str) -> ParityResult:
    """Lock-step and free-running comparison of `cand` against `ref` over `ref.run.steps` steps."""
    run = ref.run
    L = ref.model.n_layers
    state_ref = ref.init()
    # One initialisation, resharded (and, across precisions, rounded into the candidate's weight
    # dtype): the candidate starts from the reference's very bits. Through host memory, so nothing
    # aliases: the reference's step donates its state.
    state_cand = cand.init_from(jax.tree.map(lambda x: to_devices(x, cand.replicated), host_copy(state_ref.params)))
    loss_limit = bound.limit(L + 1)
    loss_ref, loss_cand, free_ref, free_cand, lrs, errors = [], [], [], [], [], []
    for t in range(run.steps):
        host = data_lib.batch(corpus, seed=run.seed, step=t, batch_size=run.batch, seq_len=run.seq)
        batch_ref = to_devices(host, ref.batch_sharding)
        batch_cand = to_devices(host, cand.batch_sharding)
        # Lock-step: the candidate evaluates at the reference's current parameters (in its own
        # weight dtype), with its own precision state (loss scale, fp8 scales) from its run.
        params_at_ref = jax.tree.map(to_devices, _cast_like(host_copy(state_ref.params), state_cand.params),
                                     cand.state_shardings.params)
        lr, gr = ref.grads(state_ref, batch_ref)
        lc, gc = cand.grads(dataclasses.replace(state_cand, params=params_at_ref), batch_cand)
        loss_ref.append(float(local_value(lr)))
        loss_cand.append(float(local_value(lc)))
        errors += compare(host_copy(gr), host_copy(gc), ref.model, bound.limit, t + 1)
        # Free-running: each run steps its own state.
        state_ref, m_ref = ref.step(state_ref, batch_ref)
        state_cand, m_cand = cand.step(state_cand, batch_cand)
        m_ref, m_cand = local_value(m_ref), local_value(m_cand)
        free_ref.append(float(m_ref["loss"]))
        lrs.append(float(m_ref["lr"]))
        free_cand.append(float(m_cand["loss"]))
    # An Adam step moves an element by about lr at most, so two runs whose updates differ in sign
    # drift apart by at most 2·lr per step (approximate: bias correction can exceed it briefly).
    drift = 2 * sum(lrs)
    free_params = compare(host_copy(state_ref.params), host_copy(state_cand.params), ref.model,
                          lambda _: drift, run.steps, limit_on="max_abs")
    return ParityResult(reference_name, candidate_name, bound, loss_ref, loss_cand, loss_limit,
                        _worst(errors), free_ref, free_cand, _worst(free_params))
