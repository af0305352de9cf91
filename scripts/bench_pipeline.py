"""Pipeline benchmark on the 8-rank default mesh: memory by schedule, throughput against pp=1.

1. Memory: the compiled train step's `memory_analysis()` temp bytes per device for gpipe, 1f1b
   and interleaved (pp=2, dp=4) as the microbatch count M grows with the microbatch size fixed —
   GPipe stashes M microbatches per stage, 1F1B at most P.
2. Throughput: tokens/s of pp=2 and pp=4 under each schedule (M = 2P) against pp=1 (dp=8) with the
   same global batch, next to the theoretical bubble and executed ÷ useful work.

    PYTHONPATH=. python scripts/bench_pipeline.py [--steps 8] [--repeats 2] [--write]
"""

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import subprocess

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # before JAX starts (a script, not the CLI)

import jax  # noqa: E402

from rainier_jax.train import data  # noqa: E402
from rainier_jax.parallel.layout import ParallelLayout  # noqa: E402
from rainier_jax.spec.model import load_model  # noqa: E402
from rainier_jax.spec.run import RunConfig  # noqa: E402
from rainier_jax.parallel.schedules import build_schedule, pack  # noqa: E402
from rainier_jax.hardware.topology import load_topology  # noqa: E402
from rainier_jax.parallel.experiment import resolve
from rainier_jax.train.loop import build_program, train  # noqa: E402

TOPO, MODEL = load_topology("trn2-mini-8"), load_model("tiny")
SCHEDULES = [("gpipe", 1), ("1f1b", 1), ("interleaved", 2)]


def program(layout, run):
    return build_program(resolve(TOPO, MODEL, layout, run))


def executed_over_useful(kind, P, M, V):
    # The executor runs the packed table; in a tick with any forward every stage runs one chunk
    # forward (1 unit), with any backward one backward that recomputes the chunk first (1 + 2
    # units), masked or not. Useful work is M·V forwards and backwards per stage: 3·M·V units.
    # (The head, run in every backward tick, is left out.)
    q = pack(build_schedule(kind, P, M, V))
    f = (q.fwd[:, :, 0] >= 0).any(axis=1)
    b = (q.bwd[:, :, 0] >= 0).any(axis=1)
    return float(f.sum() + 3 * b.sum()) / (3 * M * V)


def memory_table(seq):
    rows = ["| schedule | M | stash slots | temp MiB per device |", "|---|---:|---:|---:|"]
    layout = ParallelLayout(pp=2, dp=4)
    for kind, V in SCHEDULES:
        for M in (2, 4, 8, 16):
            run = RunConfig(batch=4 * M * 8, seq=seq, microbatches=M, schedule=kind, virtual_stages=V,
                            eval_every=0)   # 8 sequences per microbatch per replica
            temp = program(layout, run).step.memory_analysis().temp_size_in_bytes
            peak = max(build_schedule(kind, 2, M, V).peak_in_flight())
            rows.append(f"| {kind}{' V=2' if V > 1 else ''} | {M} | {peak} | {temp / 2**20:.1f} |")
            print(rows[-1], flush=True)
    return rows


def throughput_table(steps, repeats, batch, seq):
    corpus = data.load_corpus(None, MODEL.vocab_size, seq)
    base = RunConfig(steps=steps, batch=batch, seq=seq, eval_every=0)
    configs = [("pp=1 (dp=8)", ParallelLayout(dp=8), base, None)]
    for P in (2, 4):
        for kind, V in SCHEDULES:
            run = dataclasses.replace(base, microbatches=2 * P, schedule=kind, virtual_stages=V)
            configs.append((f"pp={P} {kind}{' V=2' if V > 1 else ''}", ParallelLayout(pp=P, dp=8 // P), run,
                            (kind, P, 2 * P, V)))
    programs = [program(layout, run) for _, layout, run, _ in configs]
    tps = {name: [] for name, *_ in configs}
    for _ in range(repeats):   # round robin: machine noise falls on every configuration alike
        for (name, *_), prog in zip(configs, programs):
            recs = []
            train(prog, corpus, on_step=recs.append)
            tps[name].append(statistics.median(r.tokens_per_s for r in recs[2:]))
    base_tps = statistics.median(tps[configs[0][0]])
    rows = ["| layout | schedule, M | median tokens/s | slowdown vs pp=1 | theoretical bubble | executed ÷ useful |",
            "|---|---|---:|---:|---:|---:|"]
    for name, layout, run, sched in configs:
        t = statistics.median(tps[name])
        if sched is None:
            rows.append(f"| {name} | — | {t:,.0f} | — | — | 1.00 |")
            continue
        kind, P, M, V = sched
        bubble = build_schedule(kind, P, M, V).theoretical_bubble()
        rows.append(f"| {name.split()[0]} | {kind}{' V=2' if V > 1 else ''}, M={M} | {t:,.0f} | "
                    f"{1 - t / base_tps:.1%} | {bubble:.1%} | {executed_over_useful(kind, P, M, V):.2f} |")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the tables to docs/BENCHMARKS.md")
    args = ap.parse_args()
    mem = memory_table(seq=128)
    thr = throughput_table(args.steps, args.repeats, batch=32, seq=128)
    print("\n".join(mem + [""] + thr))
    if args.write:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        head = [f"\n## {datetime.date.today()} — pipeline schedules on trn2-mini-8", "",
                f"- machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores; python {platform.python_version()}, "
                f"jax {jax.__version__}; commit {commit}; load average at start {os.getloadavg()[0]:.1f}",
                f"- command: `PYTHONPATH=. python scripts/bench_pipeline.py --steps {args.steps} "
                f"--repeats {args.repeats} --write`", "",
                "Memory: compiled step, pp=2, dp=4, 8 sequences × 128 tokens per microbatch per replica:", ""]
        tail = ["", f"Throughput: global batch 32 × 128, {args.steps} steps per run (first 2 skipped), "
                f"{args.repeats} runs per configuration interleaved, medians:", ""]
        with open("docs/BENCHMARKS.md", "a") as f:
            f.write("\n".join(head + mem + tail + thr) + "\n")


if __name__ == "__main__":
    main()
