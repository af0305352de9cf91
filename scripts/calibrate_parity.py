"""Measure the parity harness's constants from known-good layouts (docs/PARITY.md).

Runs the lock-step comparison of several trn2-mini-8 layouts against one device, for two batch
shapes, and prints, per backprop depth d, the worst gradient error in units of eps and of C^d·eps.
K in rainier_jax/parity/harness.py is 4× the worst of the latter.

    PYTHONPATH=. python scripts/calibrate_parity.py [--steps 4] [--c 1.1]
"""

import argparse
import collections
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # before JAX starts: a script, not the CLI

import numpy as np  # noqa: E402

from rainier_jax.train import data  # noqa: E402
from rainier_jax.parallel.layout import parse_layout  # noqa: E402
from rainier_jax.spec.model import load_model  # noqa: E402
from rainier_jax.parity.harness import Bound, run_parity  # noqa: E402
from rainier_jax.spec.run import RunConfig  # noqa: E402
from rainier_jax.hardware.topology import load_topology  # noqa: E402
from rainier_jax.parallel.experiment import resolve, single_device
from rainier_jax.train.loop import build_program  # noqa: E402

LAYOUTS = ["dp=8", "fsdp=8", "tp=8", "dp=2,fsdp=2,tp=2", "dp=2,tp=4", "fsdp=2,tp=4", "dp=4,fsdp=2"]
SHAPES = [(16, 64), (32, 128)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--c", type=float, default=1.1)
    args = ap.parse_args()
    topo, model = load_topology("trn2-mini-8"), load_model("tiny")
    corpus = data.synthetic_corpus()
    eps = float(np.finfo(np.float32).eps)
    worst = collections.defaultdict(float)   # depth → worst rel_l2 / eps
    loss_worst = 0.0
    for batch, seq in SHAPES:
        run = RunConfig(steps=args.steps, batch=batch, seq=seq, eval_every=0)
        ref = build_program(single_device(model, run))
        for text in LAYOUTS:
            layout = parse_layout(text, topo.num_ranks)
            cand = build_program(resolve(topo, model, layout, run))
            r = run_parity(ref, cand, corpus, bound=Bound("derived", eps), reference_name="single",
                           candidate_name=text)
            for t in r.tensors:
                worst[t.depth] = max(worst[t.depth], t.rel_l2 / eps)
            loss = max(abs(a - b) / abs(a) for a, b in zip(r.loss_ref, r.loss_cand)) / eps
            loss_worst = max(loss_worst, loss)
            print(f"{batch:>3}×{seq:<4} {text:<18} worst {r.tensors[0].path:<16} "
                  f"{r.tensors[0].rel_l2 / eps:6.1f} eps  loss {loss:5.1f} eps", flush=True)
    print(f"\n| depth | worst rel_l2 / eps | / C^d (C={args.c:g}) |\n|---:|---:|---:|")
    for d in sorted(worst):
        print(f"| {d} | {worst[d]:.1f} | {worst[d] / args.c ** d:.1f} |")
    implied = max(worst[d] / args.c ** d for d in worst)
    print(f"\nworst over depths of rel_l2 / (C^d·eps): {implied:.1f} → K = 4 × that = {4 * implied:.0f}")
    print(f"worst loss error at identical parameters: {loss_worst:.1f} eps "
          f"(loss limit at depth L+1 = {4 * implied * args.c ** (model.n_layers + 1):.0f} eps)")


if __name__ == "__main__":
    main()
