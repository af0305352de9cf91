"""The train state, the jitted step (explicit in/out shardings, state donated) and the loop.

`build_program` turns (model, layout, mesh, run settings) into compiled functions; `train` runs
the loop: the host builds batch t+1 while the devices run step t, and reads step t's metrics
before it dispatches step t+1, so that a stop asked for during step t ends the run after step t
(the devices wait only for that logging and the dispatch).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from rainier_jax.train import data as data_lib
from rainier_jax.dist.arrays import local_value, to_devices
from rainier_jax.model import numerics
from rainier_jax.model.networks import network
from rainier_jax.model.seam import Context, Network, loss as model_loss
from rainier_jax.parallel import sharding
from rainier_jax.parallel.experiment import Experiment
from rainier_jax.train.metrics import StepRecord
from rainier_jax.train.state import TrainState
from rainier_jax.parallel.pipeline import pipeline_loss_and_grads
from rainier_jax.spec.precision import Policy
from rainier_jax.spec.run import RunConfig


def lr_schedule(run: RunConfig) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup to `lr`, then cosine decay to `min_lr_ratio·lr` at the last step.
    Indexed by completed updates, so update 0 already uses lr/warmup (never a wasted step)."""
    warmup = min(run.warmup_steps, max(run.steps - 1, 0))

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum(1.0, (count + 1) / max(warmup, 1))
        progress = jnp.clip((count - warmup) / max(run.steps - warmup - 1, 1), 0.0, 1.0)
        cosine = run.min_lr_ratio + (1 - run.min_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
        return run.lr * warm * cosine
    return schedule


def make_optimizer(run: RunConfig, net: Network) -> optax.GradientTransformation:
    # The model says which parameters take weight decay (not norm scales, for one).
    return optax.chain(
        optax.clip_by_global_norm(run.grad_clip),
        optax.adamw(lr_schedule(run), b1=0.9, b2=0.95, eps=1e-8,
                    weight_decay=run.weight_decay, mask=net.decay_mask),
    )


@dataclasses.dataclass
class Program:
    """Everything compiled for one resolved experiment."""
    experiment: Experiment
    policy: Policy
    state_shardings: TrainState
    abstract_state: TrainState  # shapes, dtypes and shardings of the state (a restore target)
    batch_sharding: NamedSharding
    init: Callable[[], TrainState]
    init_from: Callable   # jitted: fp32 params (any sharding) → a fresh state holding them
    step: Any            # compiled: (state, batch) → (state, metrics)
    eval_loss: Any       # compiled: (state, batches) → loss
    grads: Callable      # jitted: (state, batch) → (loss, unscaled grads); for parity checks
    compile_seconds: float

    # The experiment's pieces, for code that holds only the program (the loop, the parity harness).
    mesh = property(lambda self: self.experiment.mesh, doc="the experiment's mesh")
    layout = property(lambda self: self.experiment.layout, doc="the experiment's layout")
    model = property(lambda self: self.experiment.model, doc="the experiment's model")
    run = property(lambda self: self.experiment.run, doc="the experiment's run settings")

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def build_program(experiment: Experiment, policy: Policy | None = None, *, compiler_options: dict | None = None,
                  with_eval: bool = True) -> Program:
    """The state, step, eval and gradient programs of `experiment`, compiled on its mesh.

    `policy` defaults to `run.precision`'s preset (tests pass variants, e.g. another loss scale).
    `compiler_options` go to the step's compile (e.g. an HLO dump); `with_eval=False` skips the
    eval program (`eval_loss` is then None) for callers that only inspect the step."""
    model, layout, run, mesh = experiment.model, experiment.layout, experiment.run, experiment.mesh
    net = network(model)
    policy = policy or run.policy
    compute = numerics.Compute(policy)
    tx = make_optimizer(run, net)
    lr_at = lr_schedule(run)
    constrain = sharding.make_constrain(mesh)
    ctx = Context(constrain, compute, run.remat)
    param_sh = sharding.param_shardings(mesh, layout, model)
    repl = sharding.replicated(mesh)

    def store(tree, prefix, step):
        return numerics.store(tree, policy, seed=run.seed, step=step, prefix=prefix)

    def precision_init():
        out = {}
        if policy.loss_scaling:
            out.update(numerics.loss_scale_init(policy))
        if policy.fp8:
            out["fp8"] = net.fp8_init(policy)
        return out

    def state_from(params32):
        # Initial weights are rounded to nearest even in every preset (so bf16 and bf16-sr start
        # from the same bits); stochastic rounding applies to the updates.
        params = numerics.store(params32, dataclasses.replace(policy, stochastic_rounding=False),
                                seed=run.seed, step=0, prefix="params")
        opt_state = store(tx.init(numerics.upcast(params)), "opt", 0)
        return TrainState(params, opt_state, jnp.zeros((), jnp.int32), precision_init())

    def init_fn(key):
        return state_from(net.init(key))

    key = jax.random.key(run.seed)
    abstract_state = jax.eval_shape(init_fn, key)
    # Optimizer moments mirror the parameters and take their shardings (ZeRO-1: also split over
    # dp; GSPMD then reduce-scatters the gradients and all-gathers the updates); counters are
    # replicated.
    moment_sh = sharding.zero1_shardings(mesh, layout, model) if run.zero1 else param_sh
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_state.opt_state, moment_sh,
                                   transform_non_params=lambda _: repl)
    state_sh = TrainState(param_sh, opt_sh, repl, jax.tree.map(lambda _: repl, abstract_state.precision))
    batch_sh = sharding.batch_sharding(mesh)

    if experiment.pipelined:
        pipe = experiment.schedule

        def scaled_loss_and_grads(params, meta, batch, scale):
            del meta  # fp8 is refused with a pipeline (precision.check_compatible)
            loss, grads = pipeline_loss_and_grads(params, batch, net, pipe, mesh, layout, ctx, loss_scale=scale)
            return loss, grads, None
    else:
        def scaled_loss_and_grads(params, meta, batch, scale):
            def scaled(p, m):
                loss = model_loss(net, net.with_fp8(p, m), batch, ctx)
                return loss * scale, loss
            (_, loss), (grads, new_meta) = jax.value_and_grad(scaled, argnums=(0, 1), has_aux=True)(params, meta)
            return loss, grads, new_meta

    def loss_and_grads(state: TrainState, batch):
        """(loss, gradients divided by the loss scale, fp8 metadata for the next step)."""
        prec = state.precision
        scale = prec["loss_scale"] if policy.loss_scaling else 1.0
        loss, grads, new_meta = scaled_loss_and_grads(state.params, prec.get("fp8"), batch, scale)
        if policy.loss_scaling:  # unscale in fp32, then back to the weights' dtype
            grads = jax.tree.map(lambda g: (g.astype(jnp.float32) / scale).astype(g.dtype), grads)
        return loss, grads, new_meta

    def step_fn(state: TrainState, batch):
        loss, grads, new_meta = loss_and_grads(state, batch)
        # The optimizer's arithmetic is fp32 in every preset; `store` rounds what is kept.
        grads32 = numerics.upcast(grads)
        grad_norm = optax.tree.norm(grads32)  # before clipping, as logged
        params32 = numerics.upcast(state.params)
        updates, opt32 = tx.update(grads32, numerics.upcast(state.opt_state), params32)
        params = store(optax.apply_updates(params32, updates), "params", state.step)
        opt_state = store(opt32, "opt", state.step)
        prec = dict(state.precision)
        applied = state.step
        if policy.loss_scaling:
            # An overflowed step changes nothing but the scale: weights and Adam state (its step
            # count included) stay as they were; the batch is consumed.
            finite = numerics.all_finite(grads)
            params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
            opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
            applied = state.step - prec["skipped"]
            prec.update(numerics.next_loss_scale(prec, finite, policy))
        if policy.fp8:
            prec["fp8"] = new_meta
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_at(applied)}
        if policy.loss_scaling:
            metrics.update(loss_scale=prec["loss_scale"], skipped=prec["skipped"])
        return TrainState(params, opt_state, state.step + 1, prec), metrics

    def eval_fn(state: TrainState, batches):
        params = net.with_fp8(state.params, state.precision.get("fp8"))
        # Evaluation keeps no activations for a backward pass: nothing to rematerialise.
        return jnp.mean(jax.lax.map(lambda b: model_loss(net, params, b, ctx.with_remat("full")), batches))

    def grads_fn(state: TrainState, batch):
        loss, grads, _ = loss_and_grads(state, batch)
        return loss, grads

    init_jit = jax.jit(init_fn, out_shardings=state_sh)
    from_jit = jax.jit(lambda p: state_from(numerics.upcast(p)), out_shardings=state_sh)
    batch_abs = jax.ShapeDtypeStruct((run.batch, run.seq + 1), jnp.int32, sharding=batch_sh)
    state_abs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             abstract_state, state_sh)
    eval_sh = NamedSharding(mesh, P(None, *batch_sh.spec))
    evals_abs = jax.ShapeDtypeStruct((run.eval_batches, run.batch, run.seq + 1), jnp.int32, sharding=eval_sh)

    t0 = time.perf_counter()
    step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl),
                   donate_argnums=0).lower(state_abs, batch_abs).compile(compiler_options)
    eval_loss = jax.jit(eval_fn, in_shardings=(state_sh, eval_sh), out_shardings=repl
                        ).lower(state_abs, evals_abs).compile() if with_eval else None
    compile_seconds = time.perf_counter() - t0
    grads = jax.jit(grads_fn, in_shardings=(state_sh, batch_sh), out_shardings=(repl, param_sh))
    return Program(experiment, policy, state_sh, state_abs, batch_sh, lambda: init_jit(key), from_jit,
                   step, eval_loss, grads, compile_seconds)


class StopRun(Exception):
    """Ends the loop at once, without saving the state it holds: raised by the loop for a
    non-finite loss, and by the caller's hooks (`on_step`, `save`) when an output fails. The
    message is one line for the user."""


def check_finite(rec: StepRecord, policy: Policy) -> None:
    """A NaN or infinite loss or gradient norm means the update just applied is garbage; under
    loss scaling (fp16-mixed) an overflow is expected and the step was skipped, so it is not."""
    if policy.loss_scaling:
        return
    bad = [f"{name} {value}" for name, value in (("loss", rec.loss), ("grad_norm", rec.grad_norm))
           if not np.isfinite(value)]
    if bad:
        raise StopRun(f"step {rec.step}: {' and '.join(bad)} — training has diverged (try a lower --lr or "
                      "another --precision); the state after this step was not saved")


def train(program: Program, corpus: data_lib.Corpus, *, on_step: Callable[[StepRecord], None],
          state: TrainState | None = None, save: Callable[[int, TrainState], None] | None = None,
          save_every: int = 0, should_stop: Callable[[], bool] | None = None) -> TrainState:
    """Run updates from `state` (fresh when None) until `program.run.steps` updates are complete,
    calling `on_step` per step. With `save`, the state of every `save_every`-th step and of the
    last step run is passed to it before the next step can donate it — only once that step's
    metrics have been read and found finite, so a diverged state is never saved. `should_stop` is
    asked before each step; when it says yes the loop ends there (and the last state is saved).
    A StopRun (non-finite loss, or raised by a hook) ends the loop at once with nothing saved."""
    run = program.run
    state = program.init() if state is None else state
    first = int(local_value(state.step))  # completed updates so far: also the next batch's index
    tokens = run.batch * run.seq
    eval_every = run.eval_every
    evals = to_devices(
        data_lib.eval_batches(corpus, batch_size=run.batch, seq_len=run.seq, num_batches=run.eval_batches),
        NamedSharding(program.mesh, P(None, *program.batch_sharding.spec)))

    def host_batch(t: int):
        # The batch for update t (0-based) is a pure function of (seed, t): resumable, layout-free.
        b = data_lib.batch(corpus, seed=run.seed, step=t, batch_size=run.batch, seq_len=run.seq)
        return to_devices(b, program.batch_sharding)

    pending = None  # (step number, device metrics) of the step dispatched last
    last_done = time.perf_counter()
    saved = first   # a resumed run's starting state is already on disk

    def finish(step_no, metrics, eval_now):
        nonlocal last_done
        m = local_value(metrics)  # blocks until that step is done
        now = time.perf_counter()
        rec = StepRecord(step_no, float(m["loss"]), float(m["grad_norm"]), float(m["lr"]),
                         tokens / max(now - last_done, 1e-9), precision=program.policy.name)
        if "loss_scale" in m:
            rec.loss_scale, rec.skipped = float(m["loss_scale"]), int(m["skipped"])
        if eval_now and np.isfinite(rec.loss):
            rec.eval_loss = float(local_value(program.eval_loss(state, evals)))
            now = time.perf_counter()  # evaluation time is not charged to the next step
        last_done = now
        on_step(rec)   # the record is kept (non-finite values as null) before the run stops
        check_finite(rec, program.policy)

    def checkpoint(step_no):
        nonlocal saved, last_done
        if save is not None and step_no > saved:
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            save(step_no, state)
            last_done += time.perf_counter() - t0  # a save's blocking time is reported by the saver
            saved = step_no

    end = run.steps
    for t in range(first, end):
        batch = host_batch(t)   # built while step t-1 runs
        if pending is not None:
            # Step t-1 is waited for before step t is dispatched: a stop asked for during step
            # t-1 then ends the run after it, and the state saved is t-1's, not one step later's.
            finish(*pending, eval_now=False)
            pending = None
        if should_stop is not None and should_stop():
            break
        step_no = t + 1
        state, metrics = program.step(state, batch)
        eval_now = step_no == end or (eval_every > 0 and step_no % eval_every == 0)
        save_now = save_every > 0 and step_no % save_every == 0
        pending = (step_no, metrics)
        # Evaluate these parameters before the next step donates them; read a step's metrics
        # before saving it (the save waits for the step anyway).
        if eval_now or save_now:
            finish(*pending, eval_now=eval_now)
            pending = None
        if save_now:
            checkpoint(step_no)
    if pending is not None:  # stopped early: report the last step run
        finish(*pending, eval_now=False)
    checkpoint(int(local_value(state.step)))
    return state
