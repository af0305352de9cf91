"""`rainier train`: validate everything, pick the checkpoint to resume, then train.

Bad input is one line and exit 2 before JAX starts (the checkpoint to resume included: its
manifest and run record are read without JAX)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from rainier_jax.cli.common import (DEFAULT_MESH, DEFAULT_MODEL, check_only, defaulted, given, run_config,
                                    run_settings, start_jax, writable_dir)
from rainier_jax.cli.models import model_for, replicated_note
from rainier_jax.cli.flags import add_mesh_flags, add_pipeline_flags, preset_help, run_default, shown
from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.train.checkpoint.record import DEFAULT_KEEP


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help="train a model on an emulated mesh")
    tr.add_argument("--mesh", default=None, help=f"mesh name or path [{DEFAULT_MESH}]")
    add_mesh_flags(tr)
    tr.add_argument("--model", default=None,
                    help=f"model name, TOML or config.json path, or FILE.py:FACTORY (docs/OWN_MODEL.md) [{DEFAULT_MODEL}]")
    tr.add_argument("--parallel", default=None,
                    help="layout dp=..,fsdp=..,tp=.. (omitted axes are 1; product = mesh ranks) [dp = all ranks]")
    tr.add_argument("--steps", type=int, default=None,
                    help="optimizer steps of the whole run (a resumed run continues up to it) "
                         f"[{run_default('steps')}]")
    tr.add_argument("--batch", type=int, default=None, help=f"global sequences per step [{run_default('batch')}]")
    tr.add_argument("--seq", type=int, default=None, help=f"sequence length [{run_default('seq')}]")
    tr.add_argument("--seed", type=int, default=None, help=f"seed for parameters and batches [{run_default('seed')}]")
    tr.add_argument("--lr", type=float, default=None, help=f"peak learning rate [{run_default('lr'):g}]")
    tr.add_argument("--eval-every", type=int, default=None,
                    help="held-out eval every K steps, and at the end; 0 = only at the end "
                         f"[{run_default('eval_every')}]")
    tr.add_argument("--data", default=None,
                    help="text file, directory of text files, or uint16 *.bin tokens [Python stdlib sources]")
    tr.add_argument("--metrics", default=None, help="append one JSON object per step to this file")
    tr.add_argument("--precision", default=None, help=f"precision preset: {preset_help()} [{run_default('precision')}]")
    tr.add_argument("--zero1", action="store_true", default=None,
                    help="ZeRO-1: split the optimizer state over the data-parallel axis too")
    tr.add_argument("--remat", default=None,
                    help="activation rematerialisation per block: full (keep block inputs), selective "
                         f"(recompute attention scores) or none [{run_default('remat')}]")
    add_pipeline_flags(tr)
    ck = tr.add_argument_group("checkpoints (docs/CHECKPOINTS.md)")
    ck.add_argument("--checkpoint-dir", default=None,
                    help="save orbax checkpoints here (asynchronously), always at the last step run")
    ck.add_argument("--checkpoint-every", type=int, default=None, help="also save every K steps")
    ck.add_argument("--keep", type=int, default=None, help=f"newest checkpoints kept [{DEFAULT_KEEP}]")
    ck.add_argument("--resume", action="store_true",
                    help="continue from the newest intact checkpoint in --checkpoint-dir; flags not given "
                         "keep their saved values")
    tr.set_defaults(func=cmd_train)


def checkpoint_plan(args):
    """Validate the checkpoint flags; with --resume, pick the checkpoint and adopt its placement
    and checkpoint settings into `args`. Returns (directory or None, Found or None, notes about
    settings the resumed run changes)."""
    from pathlib import Path

    from rainier_jax.train.checkpoint import record as records

    if args.checkpoint_dir is None:
        for name in ("checkpoint_every", "keep"):
            if getattr(args, name) is not None:
                raise ConfigError(f"{setting(name)} needs --checkpoint-dir DIR (where to save)")
        if args.resume:
            raise ConfigError("--resume needs --checkpoint-dir DIR (the run to continue)")
        return None, None, []
    from rainier_jax.config.values import bounded_int
    if args.checkpoint_every is not None:
        bounded_int("--checkpoint-every", args.checkpoint_every, want="a positive number of steps (leave it "
                    "out to save only at the end and when stopped)")
    if args.keep is not None:
        bounded_int("--keep", args.keep, want="at least 1 (checkpoints kept)")
    # Made absolute here, at the edge: orbax refuses relative paths, and a resumed run may start
    # from another working directory.
    args.checkpoint_dir = os.path.abspath(args.checkpoint_dir)
    directory = Path(args.checkpoint_dir)
    if not args.resume:
        if steps := records.steps_on_disk(directory):
            raise ConfigError(f"--checkpoint-dir {directory} already holds checkpoints (steps "
                              f"{', '.join(map(str, steps))}); pass --resume to continue that run, or give "
                              "an empty directory")
        return writable_dir(args.checkpoint_dir, "--checkpoint-dir"), None, []
    found = records.newest_intact(directory)
    where = str(found.path)
    if "mesh" in given(args, ["mesh"]):
        args.mesh = records.absolute_if_path(args.mesh)
    settings, notes = records.merge(found.record, given(args, run_settings(args) + records.RESUMED_SETTINGS),
                                   where=where)
    for name, value in settings.items():
        setattr(args, name, value)
    writable_dir(args.checkpoint_dir, "--checkpoint-dir")
    return directory, found, notes


def cmd_train(args) -> int:
    from rainier_jax.train import data as data_lib
    from rainier_jax.parallel.experiment import resolve
    from rainier_jax.train.metrics import MetricsLog
    from rainier_jax.hardware.topology import load_topology

    from rainier_jax.dist import cluster as cluster_lib

    # Everything the user gave is checked before JAX starts; so is the checkpoint to resume. A
    # user's own model file is the exception: building a Flax model needs JAX, so JAX starts
    # first (still before anything compiles).
    cluster = cluster_lib.from_env()
    ckpt_dir, found, notes = checkpoint_plan(args)
    topo = load_topology(args.mesh or DEFAULT_MESH, lnc=args.lnc)
    cluster_lib.check_topology(cluster, topo)
    saved_run = dataclasses.asdict(found.record.experiment.run) if found is not None else None
    run = run_config(args, base=saved_run)
    model, started = model_for(args, found, run, topo, cluster)
    experiment = resolve(topo, model, args.parallel, run, defaulted=defaulted(args, saved_run))
    layout, run = experiment.layout, experiment.run
    corpus = data_lib.load_corpus(args.data, model.vocab_size, run.seq)
    start = 0
    if found is not None:
        from rainier_jax.train.checkpoint import record as records
        from rainier_jax.train.checkpoint.model_record import check_model
        check_model(found.record, model, args.model, str(found.path))
        records.check_corpus(found.record, args.data, corpus.source, corpus.sha256, str(found.path))
        start = found.step
        if start >= run.steps:
            print(f"the checkpoint {found.path} has completed all {run.steps} steps of the run; nothing to do "
                  f"(give --steps above {start} to extend it)")
            return 0
    # After the resume checks: a model the checkpoint refuses is named as such first.
    from rainier_jax.perf import host_memory
    here, share = host_memory.processes_on_this_host(cluster)
    host_memory.check([host_memory.need(experiment, what=f"layout {layout}", ranks=round(layout.size * share))],
                      subject=f"{setting('model')} {model.name} on {topo.name}", processes_here=here,
                      hint=host_memory.hint_for(layout))
    checking = check_only()
    if args.metrics and checking:
        MetricsLog(args.metrics, first_step=start + 1, resuming=found is not None, check_only=True)
    if checking:   # `rainier launch` asked whether the command is valid: it is
        return 0
    # Only process 0 writes metrics and reports.
    metrics = (MetricsLog(args.metrics, first_step=start + 1, resuming=found is not None)
               if args.metrics and cluster.primary else None)

    if cluster.primary:
        for w in experiment.warnings():
            print(w, file=sys.stderr)
        for note in corpus.notes:  # e.g. a --data file that looks binary (load_corpus never prints)
            print(shown(note, args), file=sys.stderr)
    saver = None
    if ckpt_dir is not None:
        from rainier_jax.train.checkpoint import record as records
        from rainier_jax.train.checkpoint.session import SavePlan
        saver = SavePlan(directory=ckpt_dir, every=args.checkpoint_every or 0, keep=args.keep or DEFAULT_KEEP,
                         found=found,
                         warn=lambda text: print(f"rainier: {shown(text, args)}", file=sys.stderr),
                         notes=[shown(n, args) for n in notes] if cluster.primary else [], primary=cluster.primary,
                         record=records.run_record(
                             experiment, mesh=records.absolute_if_path(args.mesh or DEFAULT_MESH),
                             data_arg=records.absolute_if_path(args.data), corpus_source=corpus.source,
                             corpus_sha256=corpus.sha256, checkpoint_every=args.checkpoint_every or 0,
                             keep=args.keep or DEFAULT_KEEP))
    if not started:
        start_jax(topo.num_ranks, cluster, topo)
    return _run_training(experiment, corpus, metrics, saver, cluster, args)


def _run_training(experiment, corpus, metrics, saver=None, cluster=None, args=None) -> int:
    from rainier_jax.dist import cluster as cluster_lib
    from rainier_jax.parallel.placement import axis_links, describe_links
    from rainier_jax.train.metrics import Progress, summary
    from rainier_jax.train.loop import StopRun, build_program, local_value, train

    cluster = cluster or cluster_lib.SINGLE
    topo, model, layout, run = experiment.topology, experiment.model, experiment.layout, experiment.run
    if cluster.num_processes > 1:
        ranks = cluster_lib.local_ranks(cluster, topo)
        print(f"process {cluster.process_id} of {cluster.num_processes}: ranks {ranks.start}–{ranks.stop - 1}",
              flush=True)
    # Processes other than 0 train in silence (errors still reach stderr).
    say = print if cluster.primary else _quiet
    say(f"mesh {topo.name}: {topo.num_ranks} ranks; layout {layout}")
    for al in axis_links(layout, topo, experiment.placement):
        say(f"  {describe_links(al)}")
    say(f"model {model.name}: {model.num_params():,} parameters; batch {run.batch} × seq {run.seq} "
          f"= {run.batch * run.seq:,} tokens per step; lr {run.lr:g}; seed {run.seed}")
    if note := replicated_note(model):
        say(note, file=sys.stderr)
    say(run.policy.describe())
    say(f"activations: remat {run.remat}"
          + (f"; ZeRO-1: optimizer state split over dp={layout.dp}" if run.zero1 and layout.dp > 1 else ""))
    if run.zero1 and layout.dp == 1:
        say("--zero1: the layout has dp=1, so there is nothing to split the optimizer state over", file=sys.stderr)
    if experiment.pipelined:
        pipe = experiment.schedule
        say(f"pipeline: {run.schedule}, pp={layout.pp}, {run.microbatches} microbatches per replica"
              + (f", {run.virtual_stages} virtual stages" if run.virtual_stages > 1 else "")
              + f"; bubble {pipe.bubble():.3f}; peak in-flight per stage {pipe.peak_in_flight()}")
    say(corpus.describe(), flush=True)
    if metrics is not None and metrics.dropped:
        say(f"--metrics {metrics.path}: dropped {metrics.dropped} records after the checkpoint's step "
              "(those steps run again)")

    t0 = time.perf_counter()
    if saver is not None:
        from rainier_jax.train.checkpoint.session import CheckpointSession
        from rainier_jax.train.checkpoint.store import quiet_orbax_logging
        # orbax logs every save at INFO/WARNING and a failed background write at ERROR before
        # raising it to the loop; the run reports both itself, in one line each.
        quiet_orbax_logging()
        _quiet_orbax_teardown()
        session = CheckpointSession(saver)
    else:
        session = None
    halted = None     # a StopRun: why the run ended early, for the one line on stderr
    save_failed = False
    try:
        program = build_program(experiment)
        say(f"compiled in {program.compile_seconds:.1f} s", flush=True)
        state = session.restore(program) if session is not None else None
        start = 0 if state is None else int(local_value(state.step))
        progress = Progress(run.steps - start, first_step=start, quiet=not cluster.primary)

        def on_step(rec):
            progress.update(rec)
            if metrics is not None:
                try:
                    metrics.write(rec)
                except OSError as e:   # the first failed write ends the run; later ones would fail too
                    raise StopRun(f"--metrics {metrics.path}: cannot write step {rec.step} ({e.strerror or e})")

        def save(step, state):
            nonlocal save_failed
            try:
                session.save(step, state)
            except Exception as e:  # noqa: BLE001 — orbax reports a failed write in many types
                save_failed = True
                raise StopRun(_save_failure(e, session, args, also=step)) from None

        try:
            state = train(program, corpus, on_step=on_step, state=state,
                          save=save if session is not None else None,
                          save_every=session.every if session is not None else 0,
                          should_stop=cluster_lib.agreed(session.stop.is_set, cluster) if session is not None
                          else None)
        except StopRun as e:
            halted = e
        finally:
            progress.close()
            if metrics is not None:
                metrics.close()
    finally:
        if session is not None:
            try:
                session.close()   # waits for every save in flight to commit
            except Exception as e:  # noqa: BLE001 — the last save failed in orbax's background thread
                save_failed = True
                halted = halted or StopRun(_save_failure(e, session, args))
    if halted is not None:
        return _halt(halted, session, save_failed, cluster)
    say(summary(progress.records, compile_seconds=program.compile_seconds,
                  wall_seconds=time.perf_counter() - t0))
    if metrics is not None:
        say(f"metrics: {metrics.written} records appended to {metrics.path}")
    if session is not None:
        say(session.describe(int(local_value(state.step))))
    return 0


def _quiet_orbax_teardown() -> None:
    """After a failed background write, tensorstore's completion callbacks keep calling into
    orbax's event loop, which is closed by then, and each prints a RuntimeError traceback through
    sys.excepthook / sys.unraisablehook. The failure itself is raised to the loop and reported in
    one line, so exactly those (and nothing else) are dropped."""
    def closed_loop(exc) -> bool:
        return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

    previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind, exc, tb):
        if not closed_loop(exc):
            previous_except(kind, exc, tb)

    def unraisablehook(u):
        if not closed_loop(u.exc_value):
            previous_unraisable(u)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _save_failure(e: Exception, session, args, also: int | None = None) -> str:
    """One line for a failed checkpoint write; a full disk is named as such. Saves run in the
    background, so the error may belong to an earlier save than the one being started (`also`):
    the failed step is the oldest started save that never committed."""
    if isinstance(e, ConfigError):   # e.g. a step folder that appeared during the run: says it all
        return shown(e.raw, args)
    started = session.checkpointer.saved + ([also] if also is not None else [])
    lost = [s for s in started if not (session.directory / str(s)).is_dir()]
    step = lost[0] if lost else also
    text = " ".join(str(e).split())
    chain, cause = [text], e.__cause__ or e.__context__
    while cause is not None and len(chain) < 5:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    at = f" of step {step}" if step is not None else ""
    if any("No space left on device" in c or "ENOSPC" in c for c in chain):
        return f"--checkpoint-dir: the disk is full: the checkpoint{at} could not be written"
    return f"--checkpoint-dir: the checkpoint{at} could not be written ({type(e).__name__}: {text[:160]})"


def _halt(halted: Exception, session, save_failed: bool, cluster) -> int:
    """One line on stderr: why the run stopped and which checkpoint is the newest intact one;
    exit 1. After a failed save, orbax's background threads are left in a failed state whose
    teardown at interpreter exit prints pages of tracebacks: the process ends at once instead
    (every completed checkpoint is already committed; the failed one's temporary is removed)."""
    line = f"rainier: stopped: {halted}"
    if session is not None:
        from rainier_jax.train.checkpoint import record as records
        if save_failed:
            try:
                session.checkpointer.discard_uncommitted()
            except Exception:  # noqa: BLE001 — it re-raises the failure already being reported
                pass
        try:
            found = records.newest_intact(session.directory)
            line += f"; the newest intact checkpoint is {found.path} (step {found.step}): continue with --resume"
        except Exception:  # noqa: BLE001 — none committed yet, or none intact
            line += f"; no intact checkpoint in {session.directory}"
    print(line, file=sys.stderr, flush=True)
    if save_failed:
        sys.stdout.flush()
        os._exit(1)
    return 1


def _quiet(*args, **kwargs) -> None:
    pass
