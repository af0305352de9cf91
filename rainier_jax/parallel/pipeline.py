"""The SPMD pipeline executor: runs any valid schedule table inside one jitted program.

Loss and gradients of a `[B, T+1]` batch split into M microbatches, with the layer stack cut into
G = P·V chunks (chunk g = v·P + p on pipeline device p). All P devices run the same tick body,
vectorised over a leading stage axis that is sharded over the `pp` mesh axis (`jax.vmap` with
`spmd_axis_name`), so dp/fsdp/tp inside a stage keep working through the ordinary sharding rules.
Per tick, every device:

1. receives what its neighbours sent last tick — activations from p−1, gradients from p+1 —
   via `jnp.roll` on the stage axis, which compiles to a collective-permute (a ring);
2. runs the table's forward, if any: chunk g on microbatch m, input from the embedding (g = 0) or
   a receive buffer; it stashes the input for the backward and sends the output on;
3. runs the table's backward, if any: recomputes chunk g from the stashed input and takes its VJP
   (the last chunk adds the head and the loss, seeded with 1/M); it accumulates parameter
   gradients and sends the input gradient back (g = 0 keeps it for the embedding).

The executor runs `schedules.pack(schedule)`: the same per-device order with a forward and the
backward after it merged into one tick where possible, and runs of forward-only or backward-only
ticks get a scan body without the other half. Idle slots within a tick still compute, on whatever
the buffers hold (SPMD has no per-device branches; there is no `lax.cond`, which JAX on Neuron
lacks): every write, send and accumulation is a `jnp.where` on the table's validity bits, so
nothing computed in a bubble — NaN included — reaches a result.
Buffer slots are assigned ahead of time from the table (`plan`), so stash memory is exactly the
schedule's peak in-flight count: P for 1F1B, M for GPipe.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as PSpec

from rainier_jax.parallel import sharding
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.parallel.schedules import IDLE, Schedule, pack, segments
from rainier_jax.model.seam import Context, Network, cross_entropy


@dataclasses.dataclass(frozen=True)
class Buffers:
    """Which stash and receive-buffer slot every op of a schedule uses: the schedule as per-tick
    integer arrays `[ticks, P]`, plus the slot count of each buffer."""
    tables: dict[str, np.ndarray]
    stash_slots: int
    act_slots: int
    grad_slots: int


def _allocate(free: list[int], used: list[int]) -> int:
    slot = free.pop(0) if free else len(used)
    used.append(slot)
    return slot


def plan(s: Schedule) -> Buffers:
    """Assign stash and receive-buffer slots to every op of `s` (a slot is reused once freed)."""
    G, T, P = s.num_chunks, s.ticks, s.P
    z = lambda: np.zeros((T, P), np.int32)  # noqa: E731
    tab = {k: z() for k in ("f_on", "f_v", "f_m", "f_first", "f_last", "f_stash", "f_recv",
                            "b_on", "b_v", "b_m", "b_first", "b_last", "b_stash", "b_recv",
                            "a_on", "a_slot", "g_on", "g_slot")}
    stash = {p: {} for p in range(P)}   # (g, m) → slot
    act = {p: {} for p in range(P)}
    grad = {p: {} for p in range(P)}
    free = {name: {p: [] for p in range(P)} for name in ("stash", "act", "grad")}
    size = {name: {p: [] for p in range(P)} for name in ("stash", "act", "grad")}

    def take(name, p):
        return _allocate(free[name][p], size[name][p])

    for t in range(T):
        releases = []
        for p in range(P):
            # Arrivals sent last tick: activations from p−1 (for chunk g+1), gradients from p+1.
            if t > 0:
                g, m = (int(v) for v in s.fwd[t - 1, (p - 1) % P])
                if g != IDLE and g < G - 1:
                    slot = take("act", p)
                    act[p][(g + 1, m)] = slot
                    tab["a_on"][t, p], tab["a_slot"][t, p] = 1, slot
                g, m = (int(v) for v in s.bwd[t - 1, (p + 1) % P])
                if g != IDLE and g > 0:
                    slot = take("grad", p)
                    grad[p][(g - 1, m)] = slot
                    tab["g_on"][t, p], tab["g_slot"][t, p] = 1, slot
        for p in range(P):
            g, m = (int(v) for v in s.fwd[t, p])
            if g != IDLE:
                tab["f_on"][t, p], tab["f_v"][t, p], tab["f_m"][t, p] = 1, g // P, m
                tab["f_first"][t, p], tab["f_last"][t, p] = g == 0, g == G - 1
                if g > 0:
                    tab["f_recv"][t, p] = act[p].pop((g, m))
                    releases.append(("act", p, int(tab["f_recv"][t, p])))
                stash[p][(g, m)] = tab["f_stash"][t, p] = take("stash", p)
            g, m = (int(v) for v in s.bwd[t, p])
            if g != IDLE:
                tab["b_on"][t, p], tab["b_v"][t, p], tab["b_m"][t, p] = 1, g // P, m
                tab["b_first"][t, p], tab["b_last"][t, p] = g == 0, g == G - 1
                tab["b_stash"][t, p] = stash[p].pop((g, m))
                releases.append(("stash", p, int(tab["b_stash"][t, p])))
                if g < G - 1:
                    tab["b_recv"][t, p] = grad[p].pop((g, m))
                    releases.append(("grad", p, int(tab["b_recv"][t, p])))
        for name, p, slot in releases:   # freed at the end of the tick that read them
            free[name][p].append(slot)
    biggest = {name: max(max(size[name][p], default=-1) for p in range(P)) + 1 for name in size}
    return Buffers(tab, max(biggest["stash"], 1), max(biggest["act"], 1), max(biggest["grad"], 1))


def _where(on, new, old):
    """`new` where `on` (a scalar bit), else `old` — the only way anything enters the state."""
    return jax.tree.map(lambda a, b: jnp.where(on.astype(bool), a, b), new, old)


def pipeline_loss_and_grads(params: dict, batch_BxT1: jax.Array, net: Network, schedule: Schedule,
                            mesh: Mesh, layout: ParallelLayout, ctx: Context = Context(),
                            loss_scale=1.0, bubble_fill: float = 0.0):
    """(loss, grads) of the batch under `schedule`, equal in exact arithmetic to
    `jax.value_and_grad(seam.loss)`. The model enters through its stages (`net.stages`, the seam's
    pipeline split). Gradients come out multiplied by `loss_scale` (the backward is seeded with
    it; the loss is not). `bubble_fill` is what empty buffers and idle sends hold; set it to NaN
    to prove that nothing computed in a bubble reaches the result."""
    stages = net.stages
    # A chunk is recomputed from its stashed input in the backward, whatever the run's remat.
    ctx = ctx.with_remat("full")
    P, V, M, G = schedule.P, schedule.V, schedule.M, schedule.num_chunks
    packed = pack(schedule)
    pl = plan(packed)
    B, T1 = batch_BxT1.shape
    mb = B // M
    # Microbatch m = rows b with b % M == m: each data shard's rows stay on that shard.
    tokens_MxbxT1 = batch_BxT1.reshape(mb, M, T1).transpose(1, 0, 2)
    inputs, targets = tokens_MxbxT1[..., :-1], tokens_MxbxT1[..., 1:]

    # Layer stack [L, ...] → chunks [P, V, Lc, ...]: chunk g = v·P + p holds layers g·Lc … g·Lc+Lc−1.
    Lc = net.spec.n_layers // G

    # Arrays with a leading stage axis live on the `pp` axis; their other dimensions keep the
    # shardings the rules give them (so fsdp/tp stay split inside each stage).
    specs = sharding.param_specs(layout, net.spec)
    layer_specs = specs[stages.layers]
    batch_axes = sharding.spec(("batch",), sharding.ACTIVATION_RULES)[0]

    def pin(x, *rest):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PSpec("pp", *rest)))

    def to_stages(x, spec):
        return pin(x.reshape(V, P, Lc, *x.shape[1:]).swapaxes(0, 1), None, None, *spec[1:])

    def from_stages(x):
        return x.swapaxes(0, 1).reshape(G * Lc, *x.shape[3:])

    layers_PxV = jax.tree.map(to_stages, params[stages.layers], layer_specs)
    # Everything outside the layer stack: the embedding's and the head's parameters (shared ones,
    # such as a tied table, get both gradients in one accumulator).
    outer = {k: v for k, v in params.items() if k != stages.layers}

    # The embedding runs inside the pipeline, on chunk 0's forward and backward, so no device
    # holds all M microbatches' embeddings: activation memory stays the schedule's stash.
    def embed_mb(outer_params, m):
        return stages.embed(outer_params, inputs[m], ctx)

    act_spec = jax.eval_shape(embed_mb, outer, 0)
    act_shape, act_dtype = act_spec.shape, act_spec.dtype
    idle_act = jnp.full(act_shape, bubble_fill, act_dtype)

    def chunk(layer_params, x):
        return stages.blocks(layer_params, x, ctx)

    def chunk_and_loss(layer_params, op, x, tgt):
        y = chunk(layer_params, x)
        return y, cross_entropy(stages.head(op, y, ctx), tgt)

    def device_tick(layers_V, carry, tab, do_f: bool, do_b: bool):
        """One tick on one device (vmapped over the stage axis). `do_f`/`do_b` are static: a run
        of ticks in which no device has a forward (or backward) leaves that half out entirely."""
        stash, recv_act, recv_grad, sent_act, sent_grad, g_layers, g_outer, loss = carry
        arrived_act, arrived_grad = sent_act, sent_grad   # already rolled by the caller
        recv_act = _where(tab["a_on"], recv_act.at[tab["a_slot"]].set(arrived_act), recv_act)
        recv_grad = _where(tab["g_on"], recv_grad.at[tab["g_slot"]].set(arrived_grad), recv_grad)
        send_act = send_grad = idle_act
        if do_f:
            stash, send_act = forward(layers_V, stash, recv_act, tab)
        if do_b:
            g_layers, g_outer, loss, send_grad = backward(layers_V, stash, recv_grad, tab, g_layers, g_outer, loss)
        return stash, recv_act, recv_grad, send_act, send_grad, g_layers, g_outer, loss

    def forward(layers_V, stash, recv_act, tab):
        x_in = jnp.where(tab["f_first"].astype(bool), embed_mb(outer, tab["f_m"]),
                         recv_act[tab["f_recv"]])
        y = chunk(jax.tree.map(lambda a: a[tab["f_v"]], layers_V), x_in)
        stash = _where(tab["f_on"], stash.at[tab["f_stash"]].set(x_in), stash)
        send_act = jnp.where((tab["f_on"] & ~tab["f_last"].astype(bool)).astype(bool), y, idle_act)
        return stash, send_act

    def backward(layers_V, stash, recv_grad, tab, g_layers, g_outer, loss):
        # Recompute the chunk from the stash; VJP seeded by the next chunk's gradient or the loss.
        lp = jax.tree.map(lambda a: a[tab["b_v"]], layers_V)
        x_b = stash[tab["b_stash"]]
        last = tab["b_last"].astype(bool)
        (_, mb_loss), vjp = jax.vjp(lambda a, h, x: chunk_and_loss(a, h, x, targets[tab["b_m"]]),
                                    lp, outer, x_b)
        dy = jnp.where(last, jnp.zeros_like(idle_act), recv_grad[tab["b_recv"]])
        d_lp, d_head, dx = vjp((dy, jnp.where(last, loss_scale / M, 0.0).astype(mb_loss.dtype)))
        b_on = tab["b_on"].astype(bool)
        g_layers = _where(b_on, jax.tree.map(lambda acc, d: acc.at[tab["b_v"]].add(d), g_layers, d_lp), g_layers)
        g_outer = _where(b_on & last, jax.tree.map(jnp.add, g_outer, d_head), g_outer)
        loss = jnp.where(b_on & last, loss + mb_loss / M, loss)
        first = tab["b_first"].astype(bool)
        _, embed_vjp = jax.vjp(lambda op: embed_mb(op, tab["b_m"]), outer)
        g_outer = _where(b_on & first, jax.tree.map(jnp.add, g_outer, embed_vjp(dx)[0]), g_outer)
        send_grad = jnp.where(b_on & ~first, dx, idle_act)
        return g_layers, g_outer, loss, send_grad

    def tick(carry, tab, do_f, do_b):
        stash, recv_act, recv_grad, sent_act, sent_grad, *rest = carry
        # Ring sends: device p's activation goes to p+1, its gradient to p−1.
        carry = (stash, recv_act, recv_grad, jnp.roll(sent_act, 1, axis=0), jnp.roll(sent_grad, -1, axis=0),
                 *rest)
        body = jax.vmap(lambda lv, c, tb: device_tick(lv, c, tb, do_f, do_b), spmd_axis_name="pp")
        return body(layers_PxV, carry, tab), None

    def buffers(n):   # [P, n, mb, T, D] activation buffers
        return pin(jnp.full((P, n, *act_shape), bubble_fill, act_dtype), None, batch_axes, None, None)

    def one_act():    # [P, mb, T, D]
        return pin(jnp.full((P, *act_shape), bubble_fill, act_dtype), batch_axes, None, None)

    carry0 = (
        buffers(pl.stash_slots),
        buffers(pl.act_slots),
        buffers(pl.grad_slots),
        one_act(), one_act(),
        # Gradient accumulators are fp32 whatever the weights' dtype: M microbatches are summed.
        jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), layers_PxV),
        # Per-stage gradient accumulators for the parameters outside the layer stack.
        jax.tree.map(lambda a, s: pin(jnp.zeros((P, *a.shape), jnp.float32), *s), outer,
                     {k: specs[k] for k in outer}, is_leaf=lambda x: isinstance(x, PSpec)),
        jnp.zeros((P,), jnp.float32),
    )
    # One scan per run of ticks of the same kind (forward-only, backward-only, both).
    carry = carry0
    for start, stop, do_f, do_b in segments(packed):
        seg = {k: jnp.asarray(v[start:stop]) for k, v in pl.tables.items()}
        carry, _ = jax.lax.scan(lambda c, tb, f=do_f, b=do_b: tick(c, tb, f, b), carry, seg)
    g_layers, g_outer, loss = carry[5], carry[6], carry[7]
    # Only the devices that ran the relevant ops contributed; the others hold zeros.
    grads = jax.tree.map(lambda g: g.sum(axis=0), g_outer)
    grads[stages.layers] = jax.tree.map(from_stages, g_layers)
    # Back to the weights' dtype (a no-op for fp32 weights), as a plain value_and_grad returns them.
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    return loss.sum(), grads
