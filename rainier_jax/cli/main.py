"""The `rainier` command line: the parser and dispatch. Each command lives in its own module —
`train` (cli/train.py), `parity` (cli/parity.py), `estimate` and `plan` (cli/estimate.py),
`mesh` (cli/mesh.py), `schedule` (cli/schedule.py), `launch`, `run` (a user's own script,
cli/run.py) — and adds its own flags here.

Every command reads the mesh file first, validates every input, and only then sets the number of
emulated CPU devices and lets JAX start (cli/common.py, `start_jax`). Bad input is one line on
stderr and exit code 2, before anything compiles. Library code never imports this package.
"""

from __future__ import annotations

import argparse
import sys

from rainier_jax.cli import estimate, flags, launch, mesh, parity, run, schedule, train
from rainier_jax.cli.parser import Parser
from rainier_jax.config.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rainier", description="Emulate Trainium2 training on CPU with JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    mesh.add_parser(sub)
    train.add_parser(sub)
    parity.add_parser(sub)
    estimate.add_parser(sub)
    launch.add_parser(sub)
    run.add_parser(sub)
    schedule.add_parser(sub)
    _with_flag_tables(parser)
    return parser


def _with_flag_tables(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand its table of flags (cli/flags.py), so its messages name them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(flags=flags.table(sub))
                _with_flag_tables(sub)


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ConfigError as e:
        print(f"rainier: error: {flags.error_line(e, args)}", file=sys.stderr)
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
