"""Loss curves of the precision presets on the default model at a small learning rate.

Does plain bf16 (bf16 weights and Adam state, round-to-nearest-even) stall when the updates are
smaller than half a bf16 ulp of the weights, and does stochastic rounding (bf16-sr) track fp32?
Every preset trains the same model from the same initial weights on the same batches, on one
emulated device, through `train.loop.train` (the loop `rainier train` runs). Besides the losses, the
script records per step the fraction of weight elements the update left bit-identical.

    PYTHONPATH=. python scripts/precision_experiment.py --steps 300 --lr 1e-4 3e-5 \\
        --out-png docs/precision_loss_curves.png --out-json /tmp/precision.json

A short trial (`--steps 30`) first gives the time per step; the full run prints a table per
learning rate. The figure carries no timestamp, so re-running gives the same PNG.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_PRESETS = ["fp32", "bf16-mixed", "bf16", "bf16-sr"]
TAIL = 20  # "final train loss" = mean of the last TAIL steps' losses


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4], help="one or more peak learning rates")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="tiny")
    p.add_argument("--presets", nargs="*", default=DEFAULT_PRESETS,
                   help=f"presets to run (default: {' '.join(DEFAULT_PRESETS)}; fp16-mixed is an optional extra); "
                        "none: only combine --include files")
    p.add_argument("--include", nargs="+", default=[], metavar="JSON",
                   help="earlier --out-json files (same model, steps, batch, seq, warmup, seed) whose runs join "
                        "this one's table, JSON and plot")
    p.add_argument("--no-unchanged", action="store_true",
                   help="skip counting unchanged weight elements (saves a host copy of the weights per step)")
    p.add_argument("--smooth", type=int, default=10, help="moving-average window of the plotted curves")
    p.add_argument("--out-png", default=None)
    p.add_argument("--out-json", default=None)
    return p.parse_args(argv)


def moving_average(xs: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (shorter at the start, so no points are lost)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def run_one(model, corpus, *, preset: str, lr: float, args) -> dict:
    import jax
    import numpy as np

    from rainier_jax.spec.run import RunConfig
    from rainier_jax.parallel.experiment import single_device
    from rainier_jax.train.loop import build_program, train

    run = RunConfig(steps=args.steps, batch=args.batch, seq=args.seq, lr=lr, warmup_steps=args.warmup_steps,
                    eval_every=0, precision=preset, seed=args.seed)
    prog = build_program(single_device(model, run))

    # Unchanged elements: the weights entering step t are the result of update t-1, so a host copy
    # taken as each step is called, compared with the previous one, counts what update t-1 left
    # bit-identical. (`step` donates its state: the copy has to be on the host.)
    unchanged: list[float] = []
    per_tensor_last: dict[str, float] = {}
    prev = None

    def host_params(state):
        return {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}

    def compare(before, after, keep_per_tensor=False):
        same = {k: np.count_nonzero(before[k] == after[k]) for k in before}
        total = sum(v.size for v in before.values())
        unchanged.append(sum(same.values()) / total)
        if keep_per_tensor:
            per_tensor_last.update({k: same[k] / before[k].size for k in before})

    step = prog.step

    def counting_step(state, batch):
        nonlocal prev
        now = host_params(state)
        if prev is not None:
            compare(prev, now)
        prev = now
        return step(state, batch)

    if not args.no_unchanged:
        import dataclasses
        prog = dataclasses.replace(prog, step=counting_step)

    records = []
    t0 = time.perf_counter()
    final = train(prog, corpus, on_step=records.append)
    seconds = time.perf_counter() - t0
    if not args.no_unchanged:
        compare(prev, host_params(final), keep_per_tensor=True)

    losses = [r.loss for r in records]
    tok_s = sorted(r.tokens_per_s for r in records[5:]) or [float("nan")]
    out = {
        "preset": preset, "lr": lr,
        "bytes_per_param": prog.policy.bytes_per_param()["total"],
        "loss": losses, "grad_norm": [r.grad_norm for r in records], "lr_schedule": [r.lr for r in records],
        "eval_loss": records[-1].eval_loss,
        "final_train_loss": sum(losses[-TAIL:]) / len(losses[-TAIL:]),
        "initial_loss": losses[0],
        "compile_seconds": prog.compile_seconds, "train_seconds": seconds,
        "median_tokens_per_s": tok_s[len(tok_s) // 2],
    }
    if records[-1].skipped is not None:
        out["skipped_steps"] = records[-1].skipped
    if unchanged:
        out["unchanged_fraction"] = unchanged           # entry t-1: update t
        out["unchanged_last"] = unchanged[-1]
        after_warmup = unchanged[args.warmup_steps:]
        out["unchanged_mean_after_warmup"] = sum(after_warmup) / max(len(after_warmup), 1)
        out["unchanged_last_per_tensor"] = per_tensor_last
    return out


def table(runs: list[dict], lr: float) -> str:
    ref = next((r for r in runs if r["preset"] == "fp32"), None)
    head = ("| preset | bytes/param | train loss (last 20) | eval loss | eval − fp32 | progress vs fp32 "
            "| fp32 reached it at step | unchanged, last update | unchanged, mean after warmup | tokens/s |")
    lines = [f"lr {lr:g}", "", head, "|" + "---|" * (head.count("|") - 1)]
    ref_ma = moving_average(ref["loss"], TAIL) if ref else []
    for r in runs:
        gap = r["eval_loss"] - ref["eval_loss"] if ref else float("nan")
        # How far behind: the first step at which fp32's trailing TAIL-step mean loss was as low.
        # Shown only where the gap is beyond batch-to-batch noise (0.01 nats): on fp32's own flat
        # tail, windows over different batches differ by that much.
        caught = next((i + 1 for i, x in enumerate(ref_ma) if x <= r["final_train_loss"]), None)
        if ref and r["final_train_loss"] - ref["final_train_loss"] < 0.01:
            caught = None
        # How much of fp32's loss reduction (first step → last-20 mean) this preset achieved.
        progress = ((r["initial_loss"] - r["final_train_loss"]) / (ref["initial_loss"] - ref["final_train_loss"])
                    if ref and ref["initial_loss"] != ref["final_train_loss"] else float("nan"))
        un_last = f"{r['unchanged_last']:.1%}" if "unchanged_last" in r else "—"
        un_mean = f"{r['unchanged_mean_after_warmup']:.1%}" if "unchanged_last" in r else "—"
        lines.append(f"| {r['preset']} | {r['bytes_per_param']} | {r['final_train_loss']:.4f} | {r['eval_loss']:.4f} "
                     f"| {gap:+.4f} | {progress:.0%} | {caught or '—'} | {un_last} | {un_mean} | {r['median_tokens_per_s']:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], args, model_name: str, path: str) -> None:
    """Top: every preset's loss (faint raw, solid moving average) on one axes per learning rate.
    Bottom: each preset's moving-average loss minus fp32's, where the near-identical curves part."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = list(dict.fromkeys(r["lr"] for r in results))
    style = {"fp32": ("black", "-", 2.2), "bf16-mixed": ("tab:blue", "--", 1.6), "bf16": ("tab:red", "-", 1.6),
             "bf16-sr": ("tab:green", ":", 2.0), "fp16-mixed": ("tab:purple", "-.", 1.4),
             "fp8": ("tab:orange", "-", 1.4)}
    fig, axes = plt.subplots(2, len(lrs), figsize=(6.4 * len(lrs), 7.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.4]}, sharex="col")
    for col, lr in enumerate(lrs):
        top, bottom = axes[0][col], axes[1][col]
        runs = [r for r in results if r["lr"] == lr]
        ref = next((r for r in runs if r["preset"] == "fp32"), None)
        ref_ma = moving_average(ref["loss"], args.smooth) if ref else None
        for r in runs:
            steps = list(range(1, len(r["loss"]) + 1))
            c, ls, lw = style.get(r["preset"], ("gray", "-", 1.4))
            ma = moving_average(r["loss"], args.smooth)
            top.plot(steps, r["loss"], color=c, alpha=0.15, linewidth=0.6)
            top.plot(steps, ma, color=c, linestyle=ls, linewidth=lw,
                     label=f"{r['preset']} (final eval {r['eval_loss']:.3f})")
            if ref_ma is not None:
                bottom.plot(steps, [a - b for a, b in zip(ma, ref_ma)], color=c, linestyle=ls, linewidth=lw)
        top.set_title(f"peak lr {lr:g}")
        top.set_ylabel(f"train loss ({args.smooth}-step mean; faint: raw)")
        top.grid(True, alpha=0.3)
        top.legend()
        bottom.axhline(0, color="gray", linewidth=0.6)
        bottom.set_ylabel("loss − fp32 loss")
        bottom.set_xlabel("step")
        bottom.grid(True, alpha=0.3)
    fig.suptitle(f"model {model_name}: batch {args.batch}×{args.seq} tokens, {args.steps} steps\n"
                 f"AdamW, warmup {args.warmup_steps} then cosine to 10 % of peak, seed {args.seed}, 1 device")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    jax.config.update("jax_num_cpu_devices", 1)   # before anything else touches JAX

    from rainier_jax.train import data as data_lib
    from rainier_jax.spec.model import load_model
    from rainier_jax.spec.precision import get_policy

    for preset in args.presets:
        get_policy(preset)
    model = load_model(args.model)
    corpus = data_lib.load_corpus(None, model.vocab_size, args.seq)

    results, included_seconds = [], 0.0
    for path in args.include:
        old = json.loads(Path(path).read_text())
        for key in ("model", "steps", "batch", "seq", "warmup_steps", "seed"):
            if old["meta"][key] != getattr(args, key):
                raise SystemExit(f"--include {path}: {key} {old['meta'][key]} differs from this run's "
                                 f"{getattr(args, key)}")
        results += old["runs"]
        included_seconds += old["meta"]["total_seconds"]
    t_all = time.perf_counter()
    for lr in (args.lr if args.presets else []):
        for preset in args.presets:
            r = run_one(model, corpus, preset=preset, lr=lr, args=args)
            print(f"  {preset:<10} lr {lr:g}: train {r['final_train_loss']:.4f}  eval {r['eval_loss']:.4f}  "
                  f"({r['train_seconds']:.0f} s + {r['compile_seconds']:.0f} s compile)", flush=True)
            results = [x for x in results if (x["preset"], x["lr"]) != (preset, lr)] + [r]
    total = time.perf_counter() - t_all + included_seconds
    for lr in dict.fromkeys(r["lr"] for r in results):
        print("\n" + table([r for r in results if r["lr"] == lr], lr) + "\n")
    print(f"total {total:.0f} s" + (" (including the --include runs)" if args.include else ""))

    if args.out_json:
        from importlib.metadata import version
        meta = {"model": args.model, "steps": args.steps, "batch": args.batch, "seq": args.seq,
                "warmup_steps": args.warmup_steps, "seed": args.seed,
                "lrs": list(dict.fromkeys(r["lr"] for r in results)),
                "presets": list(dict.fromkeys(r["preset"] for r in results)),
                "tail": TAIL, "python": platform.python_version(), "jax": version("jax"),
                "total_seconds": total}
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    if args.out_png:
        plot(results, args, args.model, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
