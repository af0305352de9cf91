"""Own-model throughput: the Flax NNX port of the tiny Llama against the built-in model, tokens/s.

`scripts/nnx_llama.py:tiny_llama` (loaded through rainier's NNX adapter) and the built-in `tiny`
are trained on trn2-mini-8 with the default run settings (batch 32 × seq 128, remat full) in
each layout and precision. Every program is built once (`resolve` → `build_program`) in this one
process; the configurations then run interleaved — rounds of (built-in, NNX) × layouts ×
precisions, `--repeats` rounds — each a burst of `--warmup` untimed and `--steps` timed steps,
every step blocked on. Per burst: tokens/s from the median step time; the table gives the median
over bursts and the ratio NNX ÷ built-in per layout and precision. Target: ≥ 0.9×. A benchmark,
not a test: a miss never fails the exit code.

Sanity first: the NNX state is built from the built-in model's initial weights (`from_builtin`),
and both take step 0 on the same batch; their losses are printed side by side.

    PYTHONPATH=. python scripts/bench_own_model.py [--steps 6] [--warmup 2] [--repeats 4]
        [--layout dp=8 --layout dp=2,fsdp=2,tp=2] [--precision fp32 --precision bf16-mixed]
        [--hlo] [--write]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_emulation import machine  # noqa: E402  (no JAX import)
from rainier_jax.cli.common import start_jax  # noqa: E402

MODEL_FILE = "scripts/nnx_llama.py:tiny_llama"
TARGET = 0.9
MESH = "trn2-mini-8"
# Op kinds counted in the compiled step's HLO (--hlo): what differs between the two programs.
HLO_OPS = ("fusion", "dot", "convert", "transpose", "copy", "all-reduce", "all-gather")


def hlo_counts(compiled) -> dict[str, float]:
    """Instruction counts by opcode over the whole optimized module (every computation, fused
    bodies included); the dots whose operands are bf16 (XLA:CPU runs a bf16 dot it cannot hand to
    XNNPACK as an fp32 dot between converts); XLA's flop and byte estimates; temp bytes."""
    text = compiled.as_text()
    ops = collections.Counter(re.findall(r"=\s*[^=]*?\s([a-z][a-z0-9-]*)\(", text))
    out = {op: ops.get(op, 0) for op in HLO_OPS}
    out["instructions"] = sum(ops.values())
    dtype = dict(re.findall(r"^\s*(?:ROOT )?(%\S+) = (\w+)\[", text, flags=re.M))
    dots = re.findall(r"^\s*(?:ROOT )?%\S+ = \w+\[[^\]]*\]\S* dot\((%[^,\s]+), (%[^,\s)]+)\)", text, flags=re.M)
    out["bf16 dots"] = sum(dtype.get(x) == "bf16" and dtype.get(y) == "bf16" for x, y in dots)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["GFLOP"] = cost.get("flops", float("nan")) / 1e9
    out["GB accessed"] = cost.get("bytes accessed", float("nan")) / 1e9
    out["temp MiB"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    return out


def lscpu() -> str:
    """The CPU as `lscpu` and `nproc` name it."""
    try:
        info = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                    .stdout.splitlines() if ":" in line)
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "lscpu unavailable"
    get = lambda k: info.get(k, "?").strip()  # noqa: E731
    return (f"lscpu: {get('Model name')}, {get('CPU(s)')} CPU(s), {get('Thread(s) per core')} thread(s) per core, "
            f"hypervisor {get('Hypervisor vendor')}; nproc {nproc}")


def write_section(args, layouts, precisions, load, wall, table, summary, hrows) -> None:
    """Append a dated section — machine, exact command, commit, method, tables — to docs/BENCHMARKS.md."""
    command = "PYTHONPATH=. python " + shlex.join([f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    lines = [f"\n## {datetime.date.today().isoformat()} — own model: the NNX port of tiny against the built-in "
             f"tiny on {MESH}", "",
             f"- machine: {machine()}; {lscpu()}", f"- {load}; script wall time {wall:.0f} s",
             f"- command: `{command}` at commit {commit}",
             f"- `{MODEL_FILE}` through the NNX adapter vs `tiny`; default run settings (batch 32 × seq 128, "
             f"remat full, AdamW); layouts {', '.join(layouts)}; precisions {', '.join(precisions)}",
             f"- one process, every program built once; {args.repeats} interleaved rounds over all "
             f"configurations, each a burst of {args.warmup} untimed + {args.steps} timed steps (each blocked "
             "on); tokens/s of a burst from its median step time; medians over bursts",
             "- step-0 loss: both models from the built-in model's initial weights (`from_builtin`), "
             "the same first batch", "", table, "", *[f"- {x}" for x in summary]]
    if hrows:
        lines += ["", "Compiled train step (`--hlo`): instruction counts over the optimized module, "
                  "XLA's cost estimates, temp buffer size per device:", "", *hrows]
    out = ROOT / "docs" / "BENCHMARKS.md"
    with open(out, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {out.relative_to(ROOT)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", action="append", help="layout(s) [dp=8 and dp=2,fsdp=2,tp=2]")
    ap.add_argument("--precision", action="append", help="preset(s) [fp32 and bf16-mixed]")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per burst [6]")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each burst [2]")
    ap.add_argument("--repeats", type=int, default=4, help="bursts per configuration, round-robin [4]")
    ap.add_argument("--hlo", action="store_true", help="also print op counts of each compiled step")
    ap.add_argument("--write", action="store_true", help="append a dated section to docs/BENCHMARKS.md")
    args = ap.parse_args()
    layouts = args.layout or ["dp=8", "dp=2,fsdp=2,tp=2"]
    precisions = args.precision or ["fp32", "bf16-mixed"]
    load = "load average at start {:.1f}, {:.1f}, {:.1f}".format(*os.getloadavg())
    t_start = time.perf_counter()

    start_jax(8)   # before anything starts JAX's backend, as the CLI does
    import jax

    import nnx_llama
    from rainier_jax.dist.arrays import to_devices
    from rainier_jax.hardware.topology import load_topology
    from rainier_jax.model.nnx_adapter import load_own_model
    from rainier_jax.parallel.experiment import resolve
    from rainier_jax.spec.model import load_model
    from rainier_jax.spec.run import RunConfig
    from rainier_jax.train import data
    from rainier_jax.train.loop import build_program

    topo = load_topology(MESH)
    base = RunConfig(eval_every=0)
    models = {"built-in": load_model("tiny"), "nnx": load_own_model(MODEL_FILE, seq=base.seq)}
    corpus = data.load_corpus(None, models["built-in"].vocab_size, base.seq)
    host_batches = [data.batch(corpus, seed=base.seed, step=t, batch_size=base.batch, seq_len=base.seq)
                    for t in range(args.warmup + args.steps)]
    tokens = base.batch * base.seq

    # Build every program once; the NNX state starts from the built-in model's weights.
    configs = [(lay, prec, m) for prec in precisions for lay in layouts for m in models]
    progs, states, batches, compile_s, first_loss, hlo = {}, {}, {}, {}, {}, {}
    for lay, prec, m in configs:
        run = RunConfig(eval_every=0, precision=prec)
        prog = build_program(resolve(topo, models[m], lay, run), with_eval=False)
        progs[(lay, prec, m)] = prog
        compile_s[(lay, prec, m)] = prog.compile_seconds
        batches[(lay, prec, m)] = [to_devices(b, prog.batch_sharding) for b in host_batches]
        if m == "built-in":
            state = prog.init()
            builtin_params = jax.device_get(state.params)
        else:
            state = prog.init_from(nnx_llama.from_builtin(builtin_params))
        state, metrics = prog.step(state, batches[(lay, prec, m)][0])   # step 0: the sanity loss
        first_loss[(lay, prec, m)] = float(jax.device_get(metrics["loss"]))
        states[(lay, prec, m)] = state
        if args.hlo:
            hlo[(lay, prec, m)] = hlo_counts(prog.step)
        print(f"built {m:<8} {lay:<18} {prec:<10} compile {prog.compile_seconds:5.1f} s  "
              f"step-0 loss {first_loss[(lay, prec, m)]:.6f}", file=sys.stderr, flush=True)

    tps = {c: [] for c in configs}
    for r in range(args.repeats):   # round robin: machine noise falls on every configuration alike
        for c in configs:
            prog, state, bs = progs[c], states[c], batches[c]
            times = []
            for i, b in enumerate(bs):
                t0 = time.perf_counter()
                state, metrics = prog.step(state, b)
                jax.block_until_ready((state, metrics))
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
            states[c] = state
            tps[c].append(tokens / statistics.median(times))
            print(f"round {r + 1}/{args.repeats}  {c[2]:<8} {c[0]:<18} {c[1]:<10} {tps[c][-1]:8,.0f} tok/s",
                  file=sys.stderr, flush=True)

    rows = ["| layout | precision | model | step-0 loss | median tokens/s | bursts (tokens/s) | compile s | "
            "nnx ÷ built-in | target |",
            "|---|---|---|---:|---:|---|---:|---:|---|"]
    summary = []
    for lay, prec, m in configs:
        med = statistics.median(tps[(lay, prec, m)])
        ratio = med / statistics.median(tps[(lay, prec, "built-in")])
        verdict = f"{'PASS' if ratio >= TARGET else 'MISS'} (≥ {TARGET:g}×)" if m == "nnx" else "—"
        rows.append(f"| {lay} | {prec} | {m} | {first_loss[(lay, prec, m)]:.6f} | {med:,.0f} | "
                    f"{', '.join(f'{x:,.0f}' for x in tps[(lay, prec, m)])} | {compile_s[(lay, prec, m)]:.1f} | "
                    f"{ratio:.2f} | {verdict} |")
        if m == "nnx":
            d = abs(first_loss[(lay, prec, m)] - first_loss[(lay, prec, "built-in")])
            summary.append(f"{lay} {prec}: nnx ÷ built-in = {ratio:.2f}; step-0 loss |Δ| = {d:.2e}")
    table = "\n".join(rows)
    print(table)
    print("\n".join(summary))

    hrows = None
    if args.hlo:
        keys = list(next(iter(hlo.values())))
        hrows = ["| layout | precision | model | " + " | ".join(keys) + " |",
                 "|---|---|---|" + "---:|" * len(keys)]
        for (lay, prec, m), h in hlo.items():
            hrows.append(f"| {lay} | {prec} | {m} | " + " | ".join(
                f"{h[k]:.2f}" if isinstance(h[k], float) else str(h[k]) for k in keys) + " |")
        print("\n".join(hrows))

    wall = time.perf_counter() - t_start
    end_load = "load average at end {:.1f}, {:.1f}, {:.1f}".format(*os.getloadavg())
    print(f"wall {wall:.0f} s; {load}; {end_load}")
    if args.write:
        write_section(args, layouts, precisions, f"{load}; {end_load}", wall, table, summary, hrows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
