"""`rainier parity`: does a layout compute what a reference computes?"""

from __future__ import annotations

import dataclasses
import sys

from rainier_jax.cli.common import (DEFAULT_MESH, DEFAULT_MODEL, check_only, defaulted, run_config, start_jax,
                                    writable_dir)
from rainier_jax.cli.models import model_for
from rainier_jax.cli.flags import add_mesh_flags, add_pipeline_flags, preset_help, run_default, shown
from rainier_jax.config.errors import ConfigError, setting


def add_parser(sub) -> None:
    pa = sub.add_parser("parity", help="check that a layout computes what a reference computes")
    pa.add_argument("--parallel", default=None, help="candidate layout, e.g. dp=2,fsdp=2,tp=2")
    pa.add_argument("--matrix", action="store_true",
                    help="check every layout of the mesh's ranks the model admits, one summary row each")
    pa.add_argument("--max-layouts", type=int, default=24, help="cap on --matrix layouts [%(default)s]")
    pa.add_argument("--reference", default="single", help="single (one device) or a layout [%(default)s]")
    pa.add_argument("--precision", default=None, help=f"candidate precision: {preset_help()} [{run_default('precision')}]")
    pa.add_argument("--reference-precision", default=None,
                    help="reference precision [the candidate's: a layout check; give fp32 to measure a preset against fp32]")
    pa.add_argument("--tolerance", type=float, default=None,
                    help="override the derived bound: limit on every tensor's relative L2 error and the loss")
    pa.add_argument("--mesh", default=DEFAULT_MESH, help=f"mesh name or path [{DEFAULT_MESH}]")
    add_mesh_flags(pa)
    pa.add_argument("--model", default=DEFAULT_MODEL, help=f"model name, TOML or config.json path, or FILE.py:FACTORY (docs/OWN_MODEL.md) [{DEFAULT_MODEL}]")
    pa.add_argument("--steps", type=int, default=3, help="steps compared [%(default)s]")
    pa.add_argument("--batch", type=int, default=16, help="global sequences per step [%(default)s]")
    pa.add_argument("--seq", type=int, default=64, help="sequence length [%(default)s]")
    pa.add_argument("--seed", type=int, default=0, help="seed for parameters and batches [%(default)s]")
    pa.add_argument("--lr", type=float, default=None, help=f"peak learning rate [{run_default('lr'):g}]")
    pa.add_argument("--data", default=None, help="as for train [Python stdlib sources]")
    add_pipeline_flags(pa)
    pa.add_argument("--report", default=None,
                    help="directory for report.json and PNG plots (with --matrix: one subdirectory per layout)")
    pa.set_defaults(func=cmd_parity)


def cmd_parity(args) -> int:
    from rainier_jax.train import data as data_lib
    from rainier_jax.parallel.experiment import resolve, single_device
    from rainier_jax.parallel.layout import ParallelLayout, matrix_microbatches, parse_layout
    from rainier_jax.parallel.placement import admissible_layouts
    from rainier_jax.spec.precision import get_policy, incompatibility
    from rainier_jax.hardware.topology import load_topology

    from rainier_jax.dist import cluster as cluster_lib

    cluster = cluster_lib.from_env()
    topo = load_topology(args.mesh, lnc=args.lnc)
    cluster_lib.check_topology(cluster, topo)
    run = run_config(args)
    model, started = model_for(args, None, run, topo, cluster)
    if args.matrix == (args.parallel is not None):
        raise ConfigError("parity: give either --parallel LAYOUT or --matrix (exactly one)")
    if args.tolerance is not None and not args.tolerance > 0:
        raise ConfigError(f"--tolerance {args.tolerance}: must be a positive relative error, e.g. 1e-5")
    if args.max_layouts <= 0:
        raise ConfigError(f"--max-layouts {args.max_layouts}: must be a positive number")
    if args.matrix:
        # Without --microbatches, pipeline layouts get pp microbatches so the matrix covers them.
        candidates = admissible_layouts(topo, model, run.batch, schedule=run.schedule,
                                        microbatches=args.microbatches, virtual_stages=run.virtual_stages
                                        )[:args.max_layouts]
        if not candidates:
            raise ConfigError(f"--matrix: no layout of {topo.num_ranks} ranks fits the model and --batch {run.batch}")
    else:
        candidates = [parse_layout(args.parallel, topo.num_ranks)]
    reference = (None if args.reference == "single"
                 else parse_layout(args.reference, topo.num_ranks, setting="reference"))
    ref_layout = reference or ParallelLayout()
    # The reference is the plain model unless it is itself pipelined: no microbatching at pp=1.
    # Its precision is the candidate's unless given: by default parity checks a layout.
    ref_precision = get_policy(args.reference_precision or run.precision, setting="reference_precision").name
    ref_run = dataclasses.replace(run, precision=ref_precision)
    if ref_layout.pp == 1:
        ref_run = dataclasses.replace(ref_run, microbatches=1, virtual_stages=1, schedule="1f1b")

    def run_for(layout):
        if args.matrix and args.microbatches is None:
            return dataclasses.replace(run, microbatches=matrix_microbatches(layout))
        return run

    if args.matrix:  # layouts the precision cannot run (fp8 with a pipeline) are left out, and said so
        skipped = [c for c in candidates if incompatibility(run.policy, pp=c.pp, microbatches=run_for(c).microbatches)]
        candidates = [c for c in candidates if c not in skipped]
        if skipped:
            print(f"--matrix: {len(skipped)} pipeline layouts skipped: --precision {run.precision} cannot run them")
        if not candidates:
            raise ConfigError(f"--matrix: no layout of {topo.num_ranks} ranks can run --precision {run.precision}")
    at_default = defaulted(args)   # messages say "(the default)" for these
    experiments = [resolve(topo, model, c, run_for(c), defaulted=at_default) for c in candidates]
    if reference is None:
        ref = single_device(model, ref_run, precision_setting="reference_precision")
    else:
        ref = resolve(topo, model, reference, ref_run, setting="reference",
                      precision_setting="reference_precision", defaulted=at_default)
    # The reference and one candidate at a time are held (each candidate's program is dropped
    # before the next is built): the largest candidate decides.
    from rainier_jax.perf import host_memory
    here, share = host_memory.processes_on_this_host(cluster)
    biggest = max((host_memory.need(e, what=f"candidate {e.layout}", ranks=round(e.layout.size * share))
                   for e in experiments), key=lambda n: n.total)
    ref_need = host_memory.need(ref, what=f"reference {reference or 'single'}", topology=topo)
    host_memory.check([biggest, ref_need], subject=f"{setting('model')} {model.name} on {topo.name}",
                      processes_here=here,
                      hint=host_memory.hint_for(max(candidates, key=lambda c: c.dp)))
    # Only process 0 prints and writes the report; every process computes the same verdict.
    report_dir = writable_dir(args.report) if args.report and cluster.primary else None
    say = print if cluster.primary else (lambda *a, **k: None)
    corpus = data_lib.load_corpus(args.data, model.vocab_size, run.seq)
    if check_only():   # `rainier launch` asked whether the command is valid
        return 0
    if cluster.primary:
        for note in corpus.notes:  # e.g. a --data file that looks binary
            print(shown(note, args), file=sys.stderr)

    if not started:
        start_jax(topo.num_ranks, cluster, topo)

    from rainier_jax.parity.harness import EPS32, Bound, run_parity
    from rainier_jax.parity.report import MATRIX_HEADER, format_result, matrix_row, write_report
    from rainier_jax.train.loop import build_program

    precisions = f"{run.precision} vs {ref_run.precision}"
    ref_prog = build_program(ref)
    ref_name = str(reference) if reference else "single"
    settings = {"mesh": topo.name, "lnc": topo.lnc, "model": model.name, "steps": run.steps, "batch": run.batch,
                "seq": run.seq, "seed": run.seed, "lr": run.lr, "precision": run.precision,
                "reference_precision": ref_run.precision, "corpus_sha256": corpus.sha256,
                "schedule": run.schedule, "microbatches": run.microbatches, "virtual_stages": run.virtual_stages}
    results = []
    written: list = []  # report files, each named as the user gave --report (or under it)
    if args.matrix:
        say(f"parity matrix on {topo.name}: {len(candidates)} layouts vs {ref_name} "
              f"({model.name}, {run.steps} steps, batch {run.batch} × seq {run.seq}, {precisions})")
        say(MATRIX_HEADER, flush=True)
    for experiment in experiments:
        layout, cand_run = experiment.layout, experiment.run
        same = reference is not None and layout == reference and ref_run == cand_run
        bound = (Bound("override", EPS32, override=args.tolerance) if args.tolerance is not None
                 else Bound.for_precisions(ref_run.policy, cand_run.policy, n_layers=model.n_layers, identical=same))
        prog = build_program(experiment)
        name = str(layout) + (f" {cand_run.schedule} M={cand_run.microbatches}"
                              if layout.pp > 1 or cand_run.microbatches > 1 else "")
        result = run_parity(ref_prog, prog, corpus, bound=bound, reference_name=ref_name, candidate_name=name)
        results.append(result)
        if args.matrix:
            say(matrix_row(result), flush=True)
        else:
            say(format_result(result, header=(
                f"parity: {layout} vs {ref_name} on {topo.name} ({model.name}, {run.steps} steps, "
                f"batch {run.batch} × seq {run.seq}, {precisions})")))
        if report_dir is not None:
            written += write_report(result, report_dir / str(layout) if args.matrix else report_dir,
                                    {**settings, "candidate": str(layout), "reference": ref_name})
    failed = [r for r in results if not r.passed]
    if args.matrix:
        say(f"{len(results) - len(failed)} of {len(results)} layouts pass"
              + (f"; first failure: {failed[0].candidate}: {failed[0].first_violation}" if failed else ""))
    # On stderr, like the notes: stdout stays the same for the same command wherever --report points,
    # so two runs' outputs diff clean (tests/test_parity.py compares them).
    if written and args.matrix:  # one line, not one per layout
        names = ", ".join(dict.fromkeys(p.name for p in written))
        print(f"wrote {len(results)} reports ({names}), one directory per layout under {report_dir}, "
              f"e.g. {written[0].parent}", file=sys.stderr)
    elif written:
        print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 1 if failed else 0
