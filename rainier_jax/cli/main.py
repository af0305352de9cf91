"""`rainier` command line: the parser, `mesh show`, `mesh list`, `schedule`, and dispatch to
`train` (cli/train.py), `parity` (cli/parity.py), `estimate` and `plan` (cli/estimate.py), and
`launch` (dist/launcher.py).

Every command reads the mesh file first, validates every input, and only then sets the number of
emulated CPU devices and lets JAX start (cli_common.start_jax). Bad input is one line on stderr and
exit code 2, before anything compiles.
"""

from __future__ import annotations

import argparse
import difflib
import sys

from rainier_jax.cli.common import DEFAULT_MESH, DEFAULT_MODEL
from rainier_jax.cli.estimate import add_estimate_parser
from rainier_jax.cli.parity import cmd_parity
from rainier_jax.cli.train import cmd_train
from rainier_jax.dist.launcher import cmd_launch
from rainier_jax.config.typed import ConfigError, builtin_names
from rainier_jax.spec.precision import PRESETS  # no JAX import

PRESET_HELP = f"{', '.join(PRESETS)} (docs/PRECISION.md)"


def close_matches(word: str, choices, *, prefixes: bool = False) -> list[str]:
    """The choices nearest a mistyped `word`, best first (at most 3; near-ties kept together).

    difflib's ratio, cutoff 0.6. With `prefixes`, a choice's leading len(word) characters count
    too (at a stricter 0.75), since argparse takes any unique prefix of a flag: a mistyped
    abbreviation such as "mircro" then still finds "microbatches"."""
    scores = {}
    for choice in choices:
        score = difflib.SequenceMatcher(None, word, choice).ratio()
        if score < 0.6:
            score = 0.0
        if prefixes and len(word) >= 4 and len(choice) > len(word):
            head = difflib.SequenceMatcher(None, word, choice[:len(word)]).ratio()
            score = max(score, head if head >= 0.75 else 0.0)
        if score:
            scores[choice] = score
    best = max(scores.values(), default=0.0)
    return sorted((c for c, s in scores.items() if s >= best - 0.05), key=lambda c: -scores[c])[:3]


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class _Parser(argparse.ArgumentParser):
    """argparse with every error as one ConfigError line that names the subcommand, and a
    suggestion for a mistyped flag or command."""

    @property
    def command(self) -> str:
        """The subcommand this parser reads: "train", "mesh show"; "" for `rainier` itself."""
        return self.prog.partition(" ")[2]

    def _fail(self, message: str):
        # main() prints "rainier: error: " in front, so the command, not the prog, leads here.
        raise ConfigError(f"{self.command}: {message}" if self.command else message)

    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        # argparse checks required flags before it reports unknown ones, but a mistyped required
        # flag ("--shedule") is the cause of both: name the typo instead. (The text is argparse's,
        # unchanged from 3.11 to 3.13; if it ever changes, only this hint is lost.)
        if missing := message.partition("the following arguments are required: ")[2]:
            wanted = set(missing.split(", "))
            typos = [f for f in self._unknown_flags(getattr(self, "_argv", [])) if wanted & set(self._suggest(f))]
            if typos:
                self._fail(self._unrecognized(typos))
        self._fail(f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # for error()'s typo check
        # argparse hands a subcommand's unknown arguments up to `rainier`, which would report them
        # without knowing whose they are; each parser reports its own, against its own flags.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self._fail(self._unrecognized(extras))
        return namespace, extras

    def _suggest(self, flag: str) -> list[str]:
        # Names compared without their dashes: "--" would count as two matching characters in each.
        known = {o.lstrip("-"): o for o in self._option_string_actions}
        return [known[n] for n in close_matches(flag.lstrip("-"), known, prefixes=True)]

    def _unknown_flags(self, argv: list[str]) -> list[str]:
        """Flags in `argv` that are neither this parser's nor an abbreviation of one (up to "--")."""
        argv = argv[:argv.index("--")] if "--" in argv else argv
        names = [a.partition("=")[0] for a in argv if a.startswith("--") and len(a) > 2]
        return [n for n in names if not any(o.startswith(n) for o in self._option_string_actions)]

    def _unrecognized(self, extras: list[str]) -> str:
        flags = [a.partition("=")[0] for a in extras if a.startswith("-") and a != "-"]
        if not flags:  # stray positional words
            return f"unrecognized argument{'s' * (len(extras) > 1)} {' '.join(extras)} (see {self.prog} --help)"
        parts, suggested = [], False
        for flag in dict.fromkeys(flags):
            near = self._suggest(flag)
            suggested |= bool(near)
            parts.append(f"{flag} (did you mean {_one_of(near)}?)" if near else flag)
        return (f"unrecognized argument{'s' * (len(parts) > 1)} {', '.join(parts)}"
                + ("" if suggested else f" (see {self.prog} --help)"))

    def _check_value(self, action, value):
        # argparse's check of a subcommand name (or a choices= value), with a suggestion.
        if action.choices is None or value in action.choices:
            return
        names = [str(c) for c in action.choices]
        near = close_matches(str(value), names)
        flag = f"{'/'.join(action.option_strings)}: " if action.option_strings else ""
        hint = f"did you mean {_one_of(near)}?; " if near else ""
        self._fail(f"{flag}invalid choice {value!r} ({hint}choose from {', '.join(names)})")


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

    add_estimate_parser(sub, _add_mesh_flags, _add_pipeline_flags)

    la = sub.add_parser("launch", help="run train or parity as N local processes on JAX's multi-controller runtime")
    la.add_argument("--processes", type=int, required=True,
                    help="processes, each owning mesh-instances/N emulated instances (N must divide them)")
    la.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 [a free one]")
    la.add_argument("command", nargs=argparse.REMAINDER, help="-- train|parity [their options]")
    la.set_defaults(func=cmd_launch)

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
    from rainier_jax.hardware.topology import load_topology
    for name in builtin_names("meshes"):
        topo = load_topology(name)
        print(f"{name:<18} {topo.num_ranks:>4} ranks  {topo.instances} × {topo.torus[0]}×{topo.torus[1]} chips "
              f"× {topo.ranks_per_chip} ranks per chip")
    return 0


def cmd_mesh_show(args) -> int:
    from rainier_jax.parallel.layout import parse_layout, place
    from rainier_jax.parallel.placement_view import render_layout, render_topology
    from rainier_jax.hardware.topology import load_topology

    topo = load_topology(args.name, lnc=args.lnc, flag="mesh show")
    layout = None if args.parallel is None else parse_layout(args.parallel, topo.num_ranks)
    placement = None if layout is None else place(layout, topo)  # validated before printing anything
    print(render_topology(topo))
    if layout is not None:
        print()
        print(render_layout(topo, layout, placement))
    return 0


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
