"""`rainier schedule`: a pipeline schedule's timeline, bubble and peak in-flight activations, and
its Perfetto trace and PNG."""

from __future__ import annotations

from rainier_jax.config.errors import ConfigError


def add_parser(sub) -> None:
    sc = sub.add_parser("schedule", help="print a pipeline schedule's timeline, bubble and memory")
    sc.add_argument("--schedule", required=True, help="gpipe, 1f1b or interleaved")
    sc.add_argument("--pp", type=int, required=True, help="pipeline stages (devices)")
    sc.add_argument("--microbatches", type=int, required=True, help="microbatches per step")
    sc.add_argument("--virtual-stages", type=int, default=1, help="model chunks per device (interleaved) [1]")
    sc.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace JSON here")
    sc.add_argument("--png", default=None, help="write a PNG timeline here")
    sc.set_defaults(func=cmd_schedule)


def cmd_schedule(args) -> int:
    from pathlib import Path

    from rainier_jax.parallel.schedule_view import render_text, write_png, write_trace
    from rainier_jax.parallel.schedules import SCHEDULES, ScheduleKind, build_schedule, validate

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
