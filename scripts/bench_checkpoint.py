"""Asynchronous checkpointing's cost to the training loop: async vs. sync orbax saves vs. none.

All runs share one process: each model's program is compiled once, and the modes `none` (no
saving), `async` and `sync` (`Checkpointer(async_save=...)`) train it from scratch `--reps` times,
interleaved, so machine noise hits all modes alike. Per save the loop's waiting time is
`Checkpointer.blocked_seconds` (sync: orbax's whole save; the manifest hashing is reported apart as
`seal_seconds`). A run's first save is reported apart, since it can carry one-time costs. Tokens/s
is the whole `train` call, final wait included. Target: async blocks the loop < 10 % of
sync. A benchmark, not a test: a miss never fails the exit code.

    PYTHONPATH=. python scripts/bench_checkpoint.py [--models tiny,bench-34m] [--steps 20] [--reps 3] [--record]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_emulation import append_section  # noqa: E402
from rainier_jax.spec.model import ModelConfig, load_model  # noqa: E402  (no JAX import)

MESH = "trn2-mini-8"
# ~34M parameters, ~400 MB of fp32 params + Adam moments: big enough that a save takes visible time.
BENCH_34M = ModelConfig(name="bench-34m", vocab_size=256, d_model=512, n_layers=8, n_heads=8,
                        n_kv_heads=8, mlp_dim=2048)
# name → (model, layout). fsdp=8 for the large one: the state is sharded once, not replicated 8×,
# so a save copies and writes each byte once, as it would on the real mesh.
MODELS = {"tiny": (lambda: load_model("tiny"), "dp=8"), "bench-34m": (lambda: BENCH_34M, "fsdp=8")}
MODES = ("none", "async", "sync")
TARGET = 0.10   # async blocked / sync blocked


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_mode(program, corpus, record: dict, mode: str, save_every: int, tmp_root: str | None) -> dict:
    """Train `program` from scratch once in `mode`; returns wall seconds and the saver's figures."""
    from rainier_jax.train.checkpoint import record as resume
    from rainier_jax.train.checkpoint.store import Checkpointer
    from rainier_jax.train.loop import train

    tmp = Path(tempfile.mkdtemp(prefix=f"bench_checkpoint_{mode}_", dir=tmp_root))
    try:
        c = None if mode == "none" else Checkpointer(tmp, keep=2, async_save=(mode == "async"))
        save = None if c is None else (lambda step, state: c.save(step, state, resume.step_record(record, step)))
        steps = []   # StepRecords: their tokens/s leave out save waits, so they give the step time
        t0 = time.perf_counter()
        state = train(program, corpus, on_step=steps.append, state=None, save=save,
                      save_every=save_every if c else 0)
        if c is not None:
            c.close()   # async: the last save's background write belongs to this run's cost
        else:
            state.step.block_until_ready()
        wall = time.perf_counter() - t0
        del state
        step_s = statistics.median(program.run.batch * program.run.seq / s.tokens_per_s for s in steps)
        if c is None:
            return {"wall": wall, "step": step_s, "blocked": [], "seal": [], "bytes": 0}
        return {"wall": wall, "step": step_s, "blocked": c.blocked_seconds, "seal": c.seal_seconds,
                "bytes": dir_bytes(tmp / str(c.saved[-1]))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:,.0f}" if xs else "—"


def model_table(runs: dict[str, list[dict]], tokens: int) -> tuple[str, float]:
    """Markdown table of one model's modes, and the async/sync ratio of median blocked time."""
    tps = {m: statistics.median(tokens / r["wall"] for r in rs) for m, rs in runs.items()}
    later = {m: [b for r in rs for b in r["blocked"][1:]] for m, rs in runs.items()}
    rows = ["| mode | saves/run | first save blocked ms | blocked ms/save (later saves) | seal ms | "
            "median tokens/s | × none | checkpoint MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, rs in runs.items():
        size = f"{rs[-1]['bytes'] / 1e6:,.1f}" if m != "none" else "—"
        rows.append(f"| {m} | {len(rs[0]['blocked'])} | {ms([r['blocked'][0] for r in rs if r['blocked']])} | "
                    f"{ms(later[m])} | {ms([s for r in rs for s in r['seal']])} | {tps[m]:,.0f} | "
                    f"{tps[m] / tps['none']:.2f} | {size} |")
    ratio = (statistics.median(later["async"]) / statistics.median(later["sync"])
             if later["async"] and later["sync"] else float("nan"))
    return "\n".join(rows), ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,bench-34m", help=f"comma-separated, of {', '.join(MODELS)} [all]")
    ap.add_argument("--steps", type=int, default=20, help="steps per run [20]")
    ap.add_argument("--batch", type=int, default=8, help="global sequences per step [8]")
    ap.add_argument("--seq", type=int, default=64, help="tokens per sequence [64]")
    ap.add_argument("--save-every", type=int, default=5, help="steps between saves [5]")
    ap.add_argument("--reps", "--repeats", dest="repeats", type=int, default=3,
                    help="runs per model and mode, interleaved [3]")
    ap.add_argument("--tmp", default=None, help="where the checkpoint directories go [the system temp dir]")
    ap.add_argument("--record", action="store_true", help="append a dated section to docs/BENCHMARKS.md")
    args = ap.parse_args()
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        ap.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    if args.steps < 2 * args.save_every:
        ap.error("--steps must allow at least 2 saves (--steps ≥ 2 × --save-every): the first is reported apart")
    args.warmup = 0   # append_section's method line: no steps are skipped, tokens/s is whole-run

    load = "load average at start {:.1f}, {:.1f}, {:.1f}".format(*os.getloadavg())
    import jax   # sized before anything touches a device: one CPU device per emulated rank
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", 8)
    from rainier_jax.train.checkpoint import record as resume
    from rainier_jax.train.data import load_corpus
    from rainier_jax.parallel.layout import parse_layout
    from rainier_jax.spec.run import RunConfig
    from rainier_jax.hardware.topology import load_topology
    from rainier_jax.parallel.experiment import resolve
    from rainier_jax.train.loop import build_program, train

    topo = load_topology(MESH)
    run = RunConfig(steps=args.steps, batch=args.batch, seq=args.seq, eval_every=0)
    setups = {}   # name → (program, corpus, record), each compiled once and reused by every run
    for name in names:
        model, text = MODELS[name][0](), MODELS[name][1]
        layout = parse_layout(text, topo.num_ranks)
        program = build_program(resolve(topo, model, layout, run))
        corpus = load_corpus(None, model.vocab_size, args.seq)
        record = resume.run_record(mesh=MESH, lnc=topo.lnc, layout=text, model=dataclasses.asdict(model),
                                   run=dataclasses.asdict(run), data_arg=None, corpus_source=corpus.source,
                                   corpus_sha256=corpus.sha256)
        setups[name] = (program, corpus, record)
        # Untimed warm-up (3 steps): init is jitted lazily, and a program's first calls carry
        # one-time costs that would otherwise land on whichever mode runs first.
        done = []
        train(program, corpus, on_step=done.append, should_stop=lambda: len(done) >= 2)
        print(f"{name}: {model.num_params() / 1e6:.1f}M params, {text}, compiled in "
              f"{program.compile_seconds:.1f} s", file=sys.stderr, flush=True)

    results = {n: {m: [] for m in MODES} for n in names}
    for r in range(args.repeats):
        # Rotate the mode order each repetition: a sync run's dirty pages are still being flushed
        # by the kernel during the run after it, which should not always be the same mode's.
        order = MODES[r % 3:] + MODES[:r % 3]
        for name in names:
            for mode in order:
                res = run_mode(*setups[name], mode, args.save_every, args.tmp)
                results[name][mode].append(res)
                print(f"repeat {r + 1}/{args.repeats}  {name:<10} {mode:<5} {res['wall']:6.1f} s  "
                      f"step {res['step']:.2f} s  blocked ms {[round(b * 1e3) for b in res['blocked']]}",
                      file=sys.stderr, flush=True)

    tokens = args.steps * args.batch * args.seq
    sections = []
    for name in names:
        table, ratio = model_table(results[name], tokens)
        verdict = "PASS" if ratio < TARGET else "FAIL"
        line = (f"{name} ({MODELS[name][1]}): async / sync blocked per save (later saves, medians) = "
                f"{ratio:.1%} — {verdict} (target < {TARGET:.0%})")
        sections.append(f"### {name}\n\n{table}\n\n{line}")
    out = "\n\n".join(sections)
    print(out)

    if args.record:
        method = (f"Method: batch {args.batch} × seq {args.seq}, a save every {args.save_every} steps, "
                  "keep 2; tokens/s = steps × batch × seq / wall time of the whole `train` call (final "
                  "save committed); blocked = the loop's wait per save, a run's first save apart; "
                  "seal = manifest hashing (background thread in async mode).")
        append_section(f"async checkpointing on {MESH}: {', '.join(names)}", args, load, f"{method}\n\n{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
