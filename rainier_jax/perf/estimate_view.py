"""Text for `rainier estimate` and `rainier plan`, and the comparison of the analytic model with
the compiled program (`--compiled`)."""

from __future__ import annotations

from rainier_jax.perf import planner
from rainier_jax.perf.collectives import bytes_by
from rainier_jax.perf.estimate import Estimate

GiB = 2 ** 30


def size(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def secs(t: float) -> str:
    if t >= 1:
        return f"{t:,.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:,.1f} ms"
    return f"{t * 1e6:,.1f} µs"


def _headline(e: Estimate) -> list[str]:
    t, r = e.topo, e.run
    nodes = f" ({t.nodes} copies of the mesh joined by EFA)" if t.nodes > 1 else ""
    pipe = ""
    if e.layout.pp > 1:
        pipe = f" · {r.microbatches} microbatches, {r.schedule}" + (
            f" V={r.virtual_stages}" if r.virtual_stages > 1 else "")
    elif r.microbatches > 1:
        pipe = f" · {r.microbatches} microbatches (gradient accumulation)"
    return [
        f"{e.model.name} on {t.name}{nodes}: {t.num_ranks:,} ranks, {t.ranks_per_chip} per chip, "
        f"{size(t.hbm_bytes_per_rank)} HBM per rank",
        f"layout {e.layout} · batch {r.batch:,} × seq {r.seq:,}{pipe} · {r.precision} · remat {r.remat}"
        + (" · ZeRO-1" if r.zero1 else "") + f" · recipe {e.recipe}",
    ]


def render_estimate(e: Estimate) -> str:
    m = e.memory
    lines = _headline(e) + ["", "HBM per rank (the busiest)"]
    for name, value in (("weights", m.weights), ("gradients", m.grads), ("optimizer state", m.optimizer),
                        ("activations", m.activations), ("temporaries", m.temporaries)):
        lines.append(f"  {name:<18} {size(value):>12}")
    verdict = "fits" if m.fits else "DOES NOT FIT"
    lines.append(f"  {'total':<18} {size(m.total):>12} of {size(m.capacity)}: {verdict}")
    lines += ["", f"FLOPs per step: model {e.model_flops:.3e} (6·params·tokens + attention, no recompute); "
                  f"executed by the busiest rank {e.rank_flops:.3e} (recompute included)"]
    lines += ["", "Collectives per step, one rank (time = runs × one collective, no overlap)"]
    header = f"  {'what':<54} {'kind':<18} {'axes':<9} {'bytes':>10} {'runs':>6} {'link':<7} {'algorithm':<12} {'time':>10}"
    lines.append(header)
    for c in e.comms:
        lines.append(f"  {c.what[:54]:<54} {c.kind:<18} {'×'.join(c.axes):<9} {size(c.nbytes):>10} {c.runs:>6} "
                     f"{c.priced.link:<7} {c.priced.algorithm:<12} {secs(c.seconds):>10}")
    if not e.comms:
        lines.append("  none (one rank, or no axis of size > 1)")
    lines.append("")
    if e.layout.pp > 1 and e.idle_computed:
        lines.append(f"Pipeline bubble: {e.bubble:.1%} of the schedule; rainier's executor computes masked work in "
                     "it, so it is inside the compute time")
    elif e.layout.pp > 1:
        lines.append(f"Pipeline bubble: {e.bubble:.1%} of the pipeline's time ({e.run.schedule}, P={e.layout.pp}, "
                     f"M={e.run.microbatches}) = {secs(e.bubble_s)}")
    else:
        lines.append("Pipeline bubble: none (pp = 1)")
    lines.append(f"Step time {secs(e.step_time_s)} = compute {secs(e.compute_s)} + bubble {secs(e.bubble_s)} "
                 f"+ communication {secs(e.comm_s)}")
    lines.append(f"Throughput {e.tokens_per_s:,.0f} tokens/s, {e.seq_per_s:,.2f} sequences/s; MFU {e.mfu:.1%} "
                 f"(model FLOPs ÷ (step time × {e.topo.num_ranks:,} ranks × "
                 f"{e.topo.peak_flops_per_rank.get(e.peak_dtype, 0) / 1e12:,.2f} TFLOP/s {e.peak_dtype} peak))")
    return "\n".join(lines)


def discrepancies(profile, analytic: Estimate, *, tolerance: float = 0.01) -> list[str]:
    """Where the compiled program sends more bytes per (kind, axes), or holds more memory, than
    the analytic model of the same program expects. Scalars (≤ 8 bytes: the loss, norm partial
    sums) are left out: they cost latency, not bandwidth."""
    compiled, expected = bytes_by(profile.collectives, above=8), bytes_by(analytic.comms)
    out = []
    for key in sorted(set(compiled) | set(expected)):
        got, want = compiled.get(key, 0), expected.get(key, 0)
        if got > want * (1 + tolerance):
            expected_text = (f"{got / want:.2f}× the {size(want)} the {analytic.recipe} model expects" if want
                             else f"the {analytic.recipe} model expects none")
            out.append(f"compiled program sends {size(got)} per step as {key[0]} over {'×'.join(key[1])}: "
                       f"{expected_text}")
    if profile.hbm_bytes > analytic.memory.total * (1 + tolerance):
        out.append(f"compiled program holds {size(profile.hbm_bytes)} per rank, {profile.hbm_bytes / analytic.memory.total:.2f}× "
                   f"the {size(analytic.memory.total)} the {analytic.recipe} model expects (on CPU, temp bytes include "
                   "an fp32 copy of saved bf16 activations a bf16 backend would not make)")
    return out


def _hbm_line(profile) -> str:
    return (f"  HBM per rank {size(profile.hbm_bytes)} (arguments {size(profile.argument_bytes)}, "
            f"temporaries {size(profile.temp_bytes)}, outputs {size(profile.output_bytes)}, "
            f"aliased {size(profile.alias_bytes)})")


def render_compiled(profile, analytic: Estimate, main: Estimate) -> str:
    """The compiled program next to the analytic model of the same program (`rainier` recipe) and
    of the estimated one (`main`)."""
    lines = ["", f"Compiled: rainier's train step lowered for {analytic.topo.num_ranks:,} CPU devices from abstract "
                 f"shapes in {profile.compile_seconds:.1f} s",
             f"{_hbm_line(profile)}; analytic {size(analytic.memory.total)}",
             f"  dot FLOPs per rank {profile.dot_flops:.3e}; analytic (rainier program) {analytic.rank_flops:.3e}",
             "  collective bytes per step by kind and axes (compiled | rainier model | " + main.recipe + " model):"]
    compiled = bytes_by(profile.collectives, above=8, axes=lambda c: c.axes + (("partial",) if c.partial else ()))
    models = [bytes_by(e.comms) for e in (analytic, main)]
    for key in sorted(set(compiled) | set(models[0]) | set(models[1])):
        lines.append(f"    {key[0]:<18} {'×'.join(key[1]):<14} {size(compiled.get(key, 0)):>11} | "
                     f"{size(models[0].get(key, 0)):>11} | {size(models[1].get(key, 0)):>11}")
    found = discrepancies(profile, analytic)
    lines.append("  where the compiled program exceeds the model of itself:" if found else
                 "  the compiled program sends and holds no more than the model of itself expects (1 % tolerance)")
    lines += [f"    - {line}" for line in found]
    return "\n".join(lines)


def render_compiled_only(profile, experiment) -> str:
    """The compiled train step of a model the analytic model does not cover (a user's own)."""
    lines = [f"model {experiment.model.name} on {experiment.topology.name} ({experiment.topology.num_ranks:,} ranks), "
             f"layout {experiment.layout}; batch {experiment.run.batch:,} × seq {experiment.run.seq:,} · "
             f"{experiment.run.precision}",
             f"Compiled: rainier's train step lowered for {experiment.topology.num_ranks:,} CPU devices from abstract "
             f"shapes in {profile.compile_seconds:.1f} s (no analytic model of a user's model to compare with)",
             f"{_hbm_line(profile)}; a rank has {size(experiment.topology.hbm_bytes_per_rank)}"
             + ("" if profile.hbm_bytes <= experiment.topology.hbm_bytes_per_rank else " — it does not fit"),
             f"  dot FLOPs per rank {profile.dot_flops:.3e}",
             "  collective bytes per step by kind and axes:"]
    compiled = bytes_by(profile.collectives, above=8, axes=lambda c: c.axes + (("partial",) if c.partial else ()))
    for key in sorted(compiled):
        lines.append(f"    {key[0]:<18} {'×'.join(key[1]):<14} {size(compiled[key]):>11}")
    return "\n".join(lines)


def render_plan(p: planner.Ranking, top: int) -> str:
    if not p.ranked:
        return ""
    best = p.ranked[0]
    lines = _headline(best)[:1] + [
        f"batch {best.run.batch:,} × seq {best.run.seq:,} · {best.run.precision} · recipe {best.recipe}",
        f"{p.considered:,} candidates; {len(p.ranked):,} fit and obey the topology rules" + "".join(
            f"; {n:,} dropped: {reason}" for reason, n in p.dropped.most_common()),
        "",
        f"  {'#':>3} {'layout and settings':<66} {'tokens/s':>10} {'seq/s':>8} {'MFU':>6} {'step':>9} {'HBM':>10}  "
        "step = compute + bubble + comm by axis",
    ]
    for i, e in enumerate(p.ranked[:top], 1):
        parts = ", ".join(f"{k} {secs(v)}" for k, v in planner.breakdown(e).items() if v > 0)
        lines.append(f"  {i:>3} {planner.describe_settings(e)[:66]:<66} {e.tokens_per_s:>10,.0f} {e.seq_per_s:>8.2f} "
                     f"{e.mfu:>6.1%} {secs(e.step_time_s):>9} {size(e.memory.total):>10}  {parts}")
    lines.append("")
    def why(other):
        moves = planner.why(best, other)
        if not moves:
            return "the same time in every part; it holds less memory" if best.memory.total < other.memory.total \
                else "the same time in every part"
        return ", ".join(f"{part} {'−' if d < 0 else '+'}{secs(abs(d))}" for part, d in moves)

    lines.append(f"Why #1 wins ({planner.describe_settings(best)}):")
    others = [e for e in p.ranked[1:] if e.layout != best.layout]
    same = [e for e in p.ranked[1:] if e.layout == best.layout]
    if same:
        lines.append(f"  vs the next settings of its layout ({planner.describe_settings(same[0])}, "
                     f"{best.tokens_per_s / same[0].tokens_per_s - 1:+.1%}): {why(same[0])}")
    if others:
        lines.append(f"  vs the best other layout ({planner.describe_settings(others[0])}, "
                     f"{best.tokens_per_s / others[0].tokens_per_s - 1:+.1%}): {why(others[0])}")
    return "\n".join(lines)
