"""`rainier` command line: `mesh show`, `mesh list`, `train`.

The only module (with tests/conftest.py) that touches `jax.config`: it reads the mesh file first,
validates every input, and only then sets the number of emulated CPU devices and lets JAX start.
Bad input is one line on stderr and exit code 2, before anything compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from rainier_jax.config import ConfigError, builtin_names
from rainier_jax.precision import PRESETS  # no JAX import

DEFAULT_MESH = "trn2-mini-8"
DEFAULT_MODEL = "tiny"
PRESET_HELP = f"{', '.join(PRESETS)} (docs/PRECISION.md)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def _add_mesh_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lnc", type=int, default=None,
                   help="logical NeuronCore setting (trn2: 2 → 4 ranks per chip, 1 → 8); default from the mesh file")


def _add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", default=None, help="pipeline schedule: gpipe, 1f1b or interleaved [1f1b]")
    p.add_argument("--microbatches", type=int, default=None,
                   help="microbatches per data-parallel replica per step; with pp=1, gradient accumulation [1]")
    p.add_argument("--virtual-stages", type=int, default=None,
                   help="model chunks per pipeline device (interleaved schedule) [1]")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rainier", description="Emulate Trainium2 training on CPU with JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    mesh = sub.add_parser("mesh", help="inspect hardware meshes")
    mesh_sub = mesh.add_subparsers(dest="mesh_command", required=True, parser_class=_Parser)
    show = mesh_sub.add_parser("show", help="draw a mesh and where a layout's axes land")
    show.add_argument("name", help=f"built-in mesh name or path to a .toml ({', '.join(builtin_names('meshes'))})")
    show.add_argument("--parallel", default=None, help="layout to place, e.g. dp=2,fsdp=2,tp=2")
    _add_mesh_flags(show)
    show.set_defaults(func=cmd_mesh_show)
    lst = mesh_sub.add_parser("list", help="list the built-in meshes")
    lst.set_defaults(func=cmd_mesh_list)

    tr = sub.add_parser("train", help="train a model on an emulated mesh")
    tr.add_argument("--mesh", default=None, help=f"mesh name or path [{DEFAULT_MESH}]")
    _add_mesh_flags(tr)
    tr.add_argument("--model", default=None, help=f"model name or path [{DEFAULT_MODEL}]")
    tr.add_argument("--parallel", default=None,
                    help="layout dp=..,fsdp=..,tp=.. (omitted axes are 1; product = mesh ranks) [dp = all ranks]")
    tr.add_argument("--steps", type=int, default=None,
                    help="optimizer steps of the whole run (a resumed run continues up to it) [100]")
    tr.add_argument("--batch", type=int, default=None, help="global sequences per step [32]")
    tr.add_argument("--seq", type=int, default=None, help="sequence length [128]")
    tr.add_argument("--seed", type=int, default=None, help="seed for parameters and batches [0]")
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate [3e-3]")
    tr.add_argument("--eval-every", type=int, default=None,
                    help="held-out eval every K steps, and at the end; 0 = only at the end [50]")
    tr.add_argument("--data", default=None,
                    help="text file, directory of text files, or uint16 *.bin tokens [Python stdlib sources]")
    tr.add_argument("--metrics", default=None, help="append one JSON object per step to this file")
    tr.add_argument("--precision", default=None, help=f"precision preset: {PRESET_HELP} [fp32]")
    tr.add_argument("--zero1", action="store_true", default=None,
                    help="ZeRO-1: split the optimizer state over the data-parallel axis too")
    tr.add_argument("--remat", default=None,
                    help="activation rematerialisation per block: full (keep block inputs), selective "
                         "(recompute attention scores) or none [full]")
    _add_pipeline_flags(tr)
    ck = tr.add_argument_group("checkpoints (docs/CHECKPOINTS.md)")
    ck.add_argument("--checkpoint-dir", default=None,
                    help="save orbax checkpoints here (asynchronously), always at the last step run")
    ck.add_argument("--checkpoint-every", type=int, default=None, help="also save every K steps")
    ck.add_argument("--keep", type=int, default=None, help="newest checkpoints kept [3]")
    ck.add_argument("--resume", action="store_true",
                    help="continue from the newest intact checkpoint in --checkpoint-dir; flags not given "
                         "keep their saved values")
    tr.set_defaults(func=cmd_train)

    pa = sub.add_parser("parity", help="check that a layout computes what a reference computes")
    pa.add_argument("--parallel", default=None, help="candidate layout, e.g. dp=2,fsdp=2,tp=2")
    pa.add_argument("--matrix", action="store_true",
                    help="check every layout of the mesh's ranks the model admits, one summary row each")
    pa.add_argument("--max-layouts", type=int, default=24, help="cap on --matrix layouts [24]")
    pa.add_argument("--reference", default="single", help="single (one device) or a layout [single]")
    pa.add_argument("--precision", default=None, help=f"candidate precision: {PRESET_HELP} [fp32]")
    pa.add_argument("--reference-precision", default=None,
                    help="reference precision [the candidate's: a layout check; give fp32 to measure a preset against fp32]")
    pa.add_argument("--tolerance", type=float, default=None,
                    help="override the derived bound: limit on every tensor's relative L2 error and the loss")
    pa.add_argument("--mesh", default=DEFAULT_MESH, help=f"mesh name or path [{DEFAULT_MESH}]")
    _add_mesh_flags(pa)
    pa.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or path [{DEFAULT_MODEL}]")
    pa.add_argument("--steps", type=int, default=3, help="steps compared [3]")
    pa.add_argument("--batch", type=int, default=16, help="global sequences per step [16]")
    pa.add_argument("--seq", type=int, default=64, help="sequence length [64]")
    pa.add_argument("--seed", type=int, default=0, help="seed for parameters and batches [0]")
    pa.add_argument("--lr", type=float, default=None, help="peak learning rate [3e-3]")
    pa.add_argument("--data", default=None, help="as for train [Python stdlib sources]")
    _add_pipeline_flags(pa)
    pa.add_argument("--report", default=None,
                    help="directory for report.json and PNG plots (with --matrix: one subdirectory per layout)")
    pa.set_defaults(func=cmd_parity)

    sc = sub.add_parser("schedule", help="print a pipeline schedule's timeline, bubble and memory")
    sc.add_argument("--schedule", required=True, help="gpipe, 1f1b or interleaved")
    sc.add_argument("--pp", type=int, required=True, help="pipeline stages (devices)")
    sc.add_argument("--microbatches", type=int, required=True, help="microbatches per step")
    sc.add_argument("--virtual-stages", type=int, default=1, help="model chunks per device (interleaved) [1]")
    sc.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace JSON here")
    sc.add_argument("--png", default=None, help="write a PNG timeline here")
    sc.set_defaults(func=cmd_schedule)
    return parser


def cmd_mesh_list(args) -> int:
    from rainier_jax.topology import load_topology
    for name in builtin_names("meshes"):
        topo = load_topology(name)
        print(f"{name:<18} {topo.num_ranks:>4} ranks  {topo.instances} × {topo.torus[0]}×{topo.torus[1]} chips "
              f"× {topo.ranks_per_chip} ranks per chip")
    return 0


def cmd_mesh_show(args) -> int:
    from rainier_jax.layout import parse_layout, place
    from rainier_jax.meshview import render_layout, render_topology
    from rainier_jax.topology import load_topology

    topo = load_topology(args.name, lnc=args.lnc, flag="mesh show")
    layout = None if args.parallel is None else parse_layout(args.parallel, topo.num_ranks)
    placement = None if layout is None else place(layout, topo)  # validated before printing anything
    print(render_topology(topo))
    if layout is not None:
        print()
        print(render_layout(topo, layout, placement))
    return 0


RUN_FLAGS = ("steps", "batch", "seq", "seed", "lr", "eval_every", "microbatches", "schedule", "virtual_stages",
             "precision", "remat", "zero1")
# Train flags outside RunConfig that a resumed run takes from its checkpoint unless given.
PLACE_FLAGS = ("mesh", "lnc", "parallel", "data", "checkpoint_every", "keep")


def _given(args, names) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _run_config(args, base: dict | None = None):
    """RunConfig from the flags given, over `base` (a resumed run's saved settings) or the defaults."""
    from rainier_jax.run_config import RunConfig
    try:
        return RunConfig(**{**(base or {}), **_given(args, RUN_FLAGS)})
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _checkpoint_plan(args):
    """Validate the checkpoint flags; with --resume, pick the checkpoint and adopt its placement
    and checkpoint settings into `args`. Returns (directory or None, Found or None, notes about
    settings the resumed run changes)."""
    from pathlib import Path

    from rainier_jax import resume

    if args.checkpoint_dir is None:
        for name in ("checkpoint_every", "keep"):
            if getattr(args, name) is not None:
                raise ConfigError(f"{resume.flag(name)} needs --checkpoint-dir DIR (where to save)")
        if args.resume:
            raise ConfigError("--resume needs --checkpoint-dir DIR (the run to continue)")
        return None, None, []
    if args.checkpoint_every is not None and args.checkpoint_every <= 0:
        raise ConfigError(f"--checkpoint-every {args.checkpoint_every}: must be a positive number of steps "
                          "(leave it out to save only at the end and when stopped)")
    if args.keep is not None and args.keep <= 0:
        raise ConfigError(f"--keep {args.keep}: must keep at least 1 checkpoint")
    directory = Path(args.checkpoint_dir)
    if not args.resume:
        if steps := resume.steps_on_disk(directory):
            raise ConfigError(f"--checkpoint-dir {directory} already holds checkpoints (steps "
                              f"{', '.join(map(str, steps))}); pass --resume to continue that run, or give "
                              "an empty directory")
        return _writable_dir(args.checkpoint_dir, "--checkpoint-dir"), None, []
    found = resume.newest_intact(directory)
    where = str(found.path)
    if "mesh" in _given(args, ["mesh"]):
        args.mesh = resume.absolute_if_path(args.mesh)
    flags, notes = resume.merge(found.meta, _given(args, RUN_FLAGS + PLACE_FLAGS), where=where)
    for name, value in flags.items():
        setattr(args, name, value)
    _writable_dir(args.checkpoint_dir, "--checkpoint-dir")
    return directory, found, notes


def cmd_train(args) -> int:
    from rainier_jax import data as data_lib
    from rainier_jax.layout import layout_warnings, parse_layout, place, validate_all
    from rainier_jax.precision import check_compatible
    from rainier_jax.report import MetricsLog
    from rainier_jax.topology import load_topology
    from rainier_jax.model_config import ModelConfig, load_model, require_trainable

    # Everything the user gave is checked before JAX starts; so is the checkpoint to resume.
    ckpt_dir, found, notes = _checkpoint_plan(args)
    topo = load_topology(args.mesh or DEFAULT_MESH, lnc=args.lnc)
    if found is not None and args.model is None:
        model = ModelConfig(**found.meta["model"])
    else:
        model = load_model(args.model or DEFAULT_MODEL)
    require_trainable(model)
    layout = parse_layout(args.parallel, topo.num_ranks)
    run = _run_config(args, base=found.meta["run"] if found is not None else None)
    validate_all(layout, model, batch=run.batch, schedule=run.schedule, microbatches=run.microbatches,
                 virtual_stages=run.virtual_stages)
    check_compatible(run.policy, pp=layout.pp, microbatches=run.microbatches)
    placement = place(layout, topo)
    corpus = data_lib.load_corpus(args.data, model.vocab_size, run.seq)
    start = 0
    if found is not None:
        from rainier_jax import resume
        resume.check_model(found.meta, dataclasses.asdict(model), args.model, str(found.path))
        resume.check_corpus(found.meta, args.data, corpus.source, corpus.sha256, str(found.path))
        start = found.step
        if start >= run.steps:
            print(f"the checkpoint {found.path} has completed all {run.steps} steps of the run; nothing to do "
                  f"(give --steps above {start} to extend it)")
            return 0
    metrics = MetricsLog(args.metrics, first_step=start + 1, resuming=found is not None) if args.metrics else None

    for w in layout_warnings(layout, topo, placement):
        print(w, file=sys.stderr)
    saver = None
    if ckpt_dir is not None:
        from rainier_jax import resume
        from rainier_jax.checkpoint_session import SavePlan
        saver = SavePlan(directory=ckpt_dir, every=args.checkpoint_every or 0, keep=args.keep or 3, found=found,
                         notes=notes,
                         record=resume.run_record(
                             mesh=resume.absolute_if_path(args.mesh or DEFAULT_MESH), lnc=topo.lnc,
                             layout=",".join(f"{a}={n}" for a, n in layout.axis_sizes().items()),
                             model=dataclasses.asdict(model), run=dataclasses.asdict(run),
                             data_arg=resume.absolute_if_path(args.data), corpus_source=corpus.source,
                             corpus_sha256=corpus.sha256, checkpoint_every=args.checkpoint_every or 0,
                             keep=args.keep or 3))
    _start_jax(topo.num_ranks)
    return _run_training(topo, model, layout, placement, run, corpus, metrics, saver)


def _run_training(topo, model, layout, placement, run, corpus, metrics, saver=None) -> int:
    from rainier_jax.layout import axis_links, describe_links
    from rainier_jax.report import Progress, summary
    from rainier_jax.train import build_program, mesh_on_ranks, train

    mesh = mesh_on_ranks(layout, placement)
    print(f"mesh {topo.name}: {topo.num_ranks} ranks; layout {layout}")
    for al in axis_links(layout, topo, placement):
        print(f"  {describe_links(al)}")
    print(f"model {model.name}: {model.num_params():,} parameters; batch {run.batch} × seq {run.seq} "
          f"= {run.batch * run.seq:,} tokens per step; lr {run.lr:g}; seed {run.seed}")
    print(run.policy.describe())
    print(f"activations: remat {run.remat}"
          + (f"; ZeRO-1: optimizer state split over dp={layout.dp}" if run.zero1 and layout.dp > 1 else ""))
    if run.zero1 and layout.dp == 1:
        print("--zero1: the layout has dp=1, so there is nothing to split the optimizer state over", file=sys.stderr)
    if layout.pp > 1 or run.microbatches > 1:
        from rainier_jax.schedules import build_schedule
        pipe = build_schedule(run.schedule, layout.pp, run.microbatches, run.virtual_stages)
        print(f"pipeline: {run.schedule}, pp={layout.pp}, {run.microbatches} microbatches per replica"
              + (f", {run.virtual_stages} virtual stages" if run.virtual_stages > 1 else "")
              + f"; bubble {pipe.bubble():.3f}; peak in-flight per stage {pipe.peak_in_flight()}")
    print(corpus.describe(), flush=True)
    if metrics is not None and metrics.dropped:
        print(f"--metrics {metrics.path}: dropped {metrics.dropped} records after the checkpoint's step "
              "(those steps run again)")

    t0 = time.perf_counter()
    if saver is not None:
        from rainier_jax.checkpoint_session import CheckpointSession
        session = CheckpointSession(saver)
    else:
        session = None
    try:
        program = build_program(model, layout, mesh, run)
        print(f"compiled in {program.compile_seconds:.1f} s", flush=True)
        state = session.restore(program) if session is not None else None
        start = 0 if state is None else int(state.step)
        progress = Progress(run.steps - start, first_step=start)

        def on_step(rec):
            progress.update(rec)
            if metrics is not None:
                metrics.write(rec)

        try:
            state = train(program, corpus, on_step=on_step, state=state,
                          save=session.save if session is not None else None,
                          save_every=session.every if session is not None else 0,
                          should_stop=session.stop.is_set if session is not None else None)
        finally:
            progress.close()
            if metrics is not None:
                metrics.close()
        if session is not None:
            session.finish()
    finally:
        if session is not None:
            session.close()
    print(summary(progress.records, compile_seconds=program.compile_seconds,
                  wall_seconds=time.perf_counter() - t0))
    if session is not None:
        print(session.describe(int(state.step)))
    return 0


def cmd_parity(args) -> int:
    from rainier_jax import data as data_lib
    from rainier_jax.layout import (ParallelLayout, admissible_layouts, matrix_microbatches, parse_layout, place,
                                    validate_all)
    from rainier_jax.model_config import load_model, require_trainable
    from rainier_jax.precision import check_compatible, get_policy, incompatibility
    from rainier_jax.topology import load_topology

    topo = load_topology(args.mesh, lnc=args.lnc)
    model = load_model(args.model)
    require_trainable(model)
    run = _run_config(args)
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
    reference = None if args.reference == "single" else parse_layout(args.reference, topo.num_ranks, flag="--reference")
    ref_layout = reference or ParallelLayout()
    # The reference is the plain model unless it is itself pipelined: no microbatching at pp=1.
    # Its precision is the candidate's unless given: by default parity checks a layout.
    ref_precision = get_policy(args.reference_precision or run.precision, flag="--reference-precision").name
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
    checks = [(c, "--parallel", run_for(c)) for c in candidates]
    checks.append((ref_layout, "--reference", ref_run))
    for layout, flag, layout_run in checks:
        validate_all(layout, model, batch=run.batch, schedule=layout_run.schedule,
                     microbatches=layout_run.microbatches, virtual_stages=layout_run.virtual_stages, flag=flag)
        check_compatible(layout_run.policy, pp=layout.pp, microbatches=layout_run.microbatches,
                         flag="--reference-precision" if flag == "--reference" else "--precision")
    report_dir = _writable_dir(args.report) if args.report else None
    corpus = data_lib.load_corpus(args.data, model.vocab_size, run.seq)

    _start_jax(topo.num_ranks)

    from rainier_jax.parity import EPS32, Bound, run_parity
    from rainier_jax.parity_report import MATRIX_HEADER, format_result, matrix_row, write_report
    from rainier_jax.train import build_program, mesh_on_ranks

    precisions = f"{run.precision} vs {ref_run.precision}"
    ref_prog = build_program(model, ref_layout, mesh_on_ranks(ref_layout, place(reference, topo) if reference else None),
                             ref_run)
    ref_name = str(reference) if reference else "single"
    settings = {"mesh": topo.name, "lnc": topo.lnc, "model": model.name, "steps": run.steps, "batch": run.batch,
                "seq": run.seq, "seed": run.seed, "lr": run.lr, "precision": run.precision,
                "reference_precision": ref_run.precision, "corpus_sha256": corpus.sha256,
                "schedule": run.schedule, "microbatches": run.microbatches, "virtual_stages": run.virtual_stages}
    results = []
    if args.matrix:
        print(f"parity matrix on {topo.name}: {len(candidates)} layouts vs {ref_name} "
              f"({model.name}, {run.steps} steps, batch {run.batch} × seq {run.seq}, {precisions})")
        print(MATRIX_HEADER, flush=True)
    for layout in candidates:
        cand_run = run_for(layout)
        same = reference is not None and layout == reference and ref_run == cand_run
        bound = (Bound("override", EPS32, override=args.tolerance) if args.tolerance is not None
                 else Bound.for_precisions(ref_run.policy, cand_run.policy, n_layers=model.n_layers, identical=same))
        prog = build_program(model, layout, mesh_on_ranks(layout, place(layout, topo)), cand_run)
        name = str(layout) + (f" {cand_run.schedule} M={cand_run.microbatches}"
                              if layout.pp > 1 or cand_run.microbatches > 1 else "")
        result = run_parity(ref_prog, prog, corpus, bound=bound, reference_name=ref_name, candidate_name=name)
        results.append(result)
        if args.matrix:
            print(matrix_row(result), flush=True)
        else:
            print(format_result(result, header=(
                f"parity: {layout} vs {ref_name} on {topo.name} ({model.name}, {run.steps} steps, "
                f"batch {run.batch} × seq {run.seq}, {precisions})")))
        if report_dir is not None:
            write_report(result, report_dir / str(layout) if args.matrix else report_dir,
                         {**settings, "candidate": str(layout), "reference": ref_name})
    failed = [r for r in results if not r.passed]
    if args.matrix:
        print(f"{len(results) - len(failed)} of {len(results)} layouts pass"
              + (f"; first failure: {failed[0].candidate}: {failed[0].first_violation}" if failed else ""))
    return 1 if failed else 0


def cmd_schedule(args) -> int:
    from pathlib import Path

    from rainier_jax.schedule_view import render_text, write_png, write_trace
    from rainier_jax.schedules import SCHEDULES, ScheduleKind, build_schedule, validate

    if args.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {args.schedule}: unknown schedule (choose {', '.join(SCHEDULES)})")
    validate(ScheduleKind(args.schedule), args.pp, args.microbatches, args.virtual_stages)
    outputs = [(flag, Path(p)) for flag, p in (("--trace", args.trace), ("--png", args.png)) if p]
    for flag, path in outputs:
        if not path.parent.is_dir():
            raise ConfigError(f"{flag} {path}: directory {path.parent} does not exist; create it or "
                              "give another path")
    schedule = build_schedule(args.schedule, args.pp, args.microbatches, args.virtual_stages)
    print(render_text(schedule))
    for flag, path in outputs:
        try:
            (write_trace if flag == "--trace" else write_png)(schedule, path)
        except OSError as e:
            raise ConfigError(f"{flag} {path}: cannot write ({e.strerror})") from None
        print(f"wrote {path}")
    return 0


def _writable_dir(path: str, flag: str = "--report"):
    from pathlib import Path
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory; give a directory path")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".rainier-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write there ({e.strerror}); give a writable directory") from None
    return d


def _start_jax(num_devices: int) -> None:
    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_devices)
    if len(jax.devices()) != num_devices:  # JAX was started before the CLI could size it
        raise ConfigError(f"needs {num_devices} CPU devices but JAX already has {len(jax.devices())}; "
                          "run rainier in a fresh process")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ConfigError as e:
        print(f"rainier: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rainier: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rainier mesh show … | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
