"""`rainier estimate` and `rainier plan`: the performance model on the command line.

Everything is validated before anything is computed (one line, exit 2). The analytic path never
starts JAX; `--compiled` starts it with one CPU device per rank of the full-size mesh, after
checking that the mesh fits one process and the model is one rainier can build.
"""

from __future__ import annotations

import json
import sys

from rainier_jax.cli.flags import add_mesh_flags, add_pipeline_flags
from rainier_jax.config.errors import ConfigError
from rainier_jax.spec.own import is_model_file

DEFAULT_SEQ = 4096


def add_parser(sub) -> None:
    def common(p):
        p.add_argument("--model", required=True, help="model name, .toml, or Hugging Face config.json (llama, gpt2); "
                            "estimate --compiled also takes FILE.py:FACTORY (docs/OWN_MODEL.md)")
        p.add_argument("--mesh", required=True, help="mesh name or .toml (e.g. trn2-instance, trn2-ultraserver)")
        add_mesh_flags(p)
        p.add_argument("--nodes", type=int, default=None,
                       help="N copies of the mesh (instances of trn2-instance, UltraServers of trn2-ultraserver) "
                            "joined by EFA [1]")
        p.add_argument("--batch", type=int, required=True, help="global sequences per step")
        p.add_argument("--seq", type=int, default=None, help=f"sequence length [{DEFAULT_SEQ}]")
        p.add_argument("--precision", default=None, help="precision preset (docs/PRECISION.md) [bf16-mixed]")
        p.add_argument("--recipe", default="nxd",
                       help="program estimated: nxd (neuronx-distributed's: fused projections, sequence "
                            "parallelism, flash attention, one gradient reduction per step) or rainier (what "
                            "rainier's own GSPMD step sends) [nxd]; docs/PERFMODEL.md")
        p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")

    est = sub.add_parser("estimate", help="predict HBM, collectives, step time and MFU of a layout at full scale")
    common(est)
    est.add_argument("--parallel", default=None, help="layout tp=..,pp=..,dp=..,fsdp=.. [dp = all ranks]")
    est.add_argument("--zero1", action="store_true", default=None, help="ZeRO-1: optimizer state split over dp")
    est.add_argument("--remat", default=None, help="full, selective or none [full]")
    add_pipeline_flags(est)
    est.add_argument("--compiled", action="store_true",
                     help="also lower rainier's real train step for the full mesh (≤ 2,048 ranks) and compare")
    est.set_defaults(func=cmd_estimate)

    pl = sub.add_parser("plan", help="rank every layout of a model on a mesh by predicted throughput")
    common(pl)
    pl.add_argument("--top", type=int, default=10, help="candidates shown [10]")
    pl.set_defaults(func=cmd_plan)


def _setup(args):
    from rainier_jax.perf.estimate import RECIPES
    from rainier_jax.spec.model import load_model
    from rainier_jax.hardware.topology import load_topology, with_nodes

    if is_model_file(args.model):
        if getattr(args, "compiled", False):
            cfg = None   # built with JAX, once it has the mesh's devices (cmd_estimate)
        else:
            raise ConfigError(f"--model {args.model}: a Flax model has no analytic performance model; add "
                              "--compiled to lower its real train step for the mesh (rainier estimate only; "
                              "docs/OWN_MODEL.md)")
    else:
        cfg = load_model(args.model)
    topo = load_topology(args.mesh, lnc=args.lnc)
    if args.nodes is not None:
        topo = with_nodes(topo, args.nodes)
    if args.recipe not in RECIPES:
        raise ConfigError(f"--recipe {args.recipe}: one of {', '.join(RECIPES)}")
    if args.recipe == "rainier" and cfg is not None and cfg.arch != "llama":
        raise ConfigError(f"--recipe rainier: rainier builds llama-type programs only ({cfg.name} is {cfg.arch}); "
                          "use --recipe nxd")
    from rainier_jax.config.values import bounded_int
    bounded_int("--batch", args.batch, want="a positive number of sequences")
    if args.seq is None:
        args.seq = DEFAULT_SEQ
    bounded_int("--seq", args.seq, want="a positive sequence length")
    if args.precision is None:
        args.precision = "bf16-mixed"
    return cfg, topo


def cmd_estimate(args) -> int:
    from rainier_jax.cli.common import defaulted, run_config
    from rainier_jax.perf.estimate import estimate
    from rainier_jax.parallel.experiment import resolve

    cfg, topo = _setup(args)
    if cfg is None:
        return _estimate_own(args, topo)
    experiment = resolve(topo, cfg, args.parallel, run_config(args), defaulted=defaulted(args))
    layout = experiment.layout
    if args.compiled:
        from rainier_jax.perf.compiled import check_compilable
        check_compilable(cfg, topo, layout)
    for warning in experiment.warnings():
        print(f"rainier: {warning}", file=sys.stderr)
    e = estimate(experiment, recipe=args.recipe)
    profile = own = None
    if args.compiled:
        from rainier_jax.cli.common import start_jax
        from rainier_jax.perf.compiled import profile_step
        start_jax(topo.num_ranks)
        profile = profile_step(experiment)
        own = estimate(experiment, recipe="rainier")
    if args.json:
        out = e.as_json()
        if profile is not None:
            from rainier_jax.perf.estimate_view import discrepancies
            out["compiled"] = {**compiled_json(profile), "exceeds_model": discrepancies(profile, own)}
        print(json.dumps(out, indent=1))
        return 0
    from rainier_jax.perf.estimate_view import render_compiled, render_estimate
    print(render_estimate(e))
    if profile is not None:
        print(render_compiled(profile, own, e))
    return 0


def _estimate_own(args, topo) -> int:
    """`estimate --compiled` of a user's model: the compiled train step alone (there is no
    analytic model of an arbitrary Flax module to set beside it)."""
    from rainier_jax.cli.common import defaulted, run_config, start_jax
    from rainier_jax.model.nnx_adapter import load_own_model
    from rainier_jax.parallel.experiment import resolve
    from rainier_jax.perf.compiled import check_ranks, profile_step
    from rainier_jax.perf.estimate_view import render_compiled_only

    check_ranks(topo)
    run = run_config(args)
    start_jax(topo.num_ranks)
    model = load_own_model(args.model, seq=run.seq)
    experiment = resolve(topo, model, args.parallel, run, defaulted=defaulted(args))
    for warning in experiment.warnings():
        print(f"rainier: {warning}", file=sys.stderr)
    profile = profile_step(experiment)
    if args.json:
        print(json.dumps({"model": model.name, "mesh": topo.name, "ranks": topo.num_ranks,
                          "layout": experiment.layout.axis_sizes(), "compiled": compiled_json(profile)}, indent=1))
        return 0
    print(render_compiled_only(profile, experiment))
    return 0


def compiled_json(profile) -> dict:
    """The compiled profile's fields in `estimate --json`."""
    return {"compile_seconds": profile.compile_seconds, "hbm_per_rank_bytes": profile.hbm_bytes,
            "argument_bytes": profile.argument_bytes, "temp_bytes": profile.temp_bytes,
            "dot_flops_per_rank": profile.dot_flops,
            "collective_bytes": [{"kind": k, "axes": list(a), "bytes": b}
                                 for (k, a), b in sorted(profile.bytes_by().items())]}


# The sweep's time grows with the ranks (more factorisations, each estimated over more groups).
MAX_PLAN_RANKS = 16_384


def cmd_plan(args) -> int:
    import time

    from rainier_jax.perf.estimate_view import render_plan
    from rainier_jax.perf.planner import describe_settings, plan
    from rainier_jax.spec.precision import get_policy

    cfg, topo = _setup(args)
    get_policy(args.precision)
    from rainier_jax.config.values import bounded_int
    bounded_int("plan: ranks", topo.num_ranks, hi=MAX_PLAN_RANKS,
                why="the sweep estimates thousands of layouts: 8,192 ranks take about 30 s; use "
                    "`rainier estimate` for a given layout on more")
    if args.top <= 0:
        raise ConfigError(f"--top {args.top}: must show at least 1 candidate")
    t0 = time.perf_counter()
    result = plan(cfg, topo, batch=args.batch, seq=args.seq, precision=args.precision, recipe=args.recipe)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"considered": result.considered, "fitting": len(result.ranked), "seconds": seconds,
                          "dropped": dict(result.dropped),
                          "top": [dict(e.as_json(), settings=describe_settings(e)) for e in result.ranked[:args.top]]},
                         indent=1))
        return 0 if result.ranked else 1
    if not result.ranked:
        reasons = "; ".join(f"{n:,} {r}" for r, n in result.dropped.most_common())
        print(f"rainier plan: no layout of {cfg.name} fits {topo.name} with batch {args.batch} × seq {args.seq} "
              f"({reasons}); try more --nodes, a smaller --batch or --seq", file=sys.stderr)
        return 1
    print(render_plan(result, args.top))
    print(f"\n(swept in {seconds:.1f} s)")
    return 0
