"""How the command line spells the library's settings: each setting as the flag that sets it.

The library names settings (`microbatches`, `parallel`, `checkpoint_dir`) and marks them in its
messages (rainier_jax/config/errors.py). Each subcommand's parser is the table from setting to
flag — an option's `dest` is the setting it sets — so a message shown by `rainier train` says
`--microbatches` and one shown by `rainier schedule` says `--pp` where train would say `pp`.
"""

from __future__ import annotations

import argparse

from rainier_jax.config.errors import ConfigError, spell


def table(parser: argparse.ArgumentParser) -> dict[str, str]:
    """setting → how the user gave it, for one subcommand's parser: the long flag that sets it,
    or for a positional argument the command itself (`mesh show NAME`: "mesh show")."""
    command = parser.prog.partition(" ")[2]
    out = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest != "help":
            out[action.dest] = longs[0]
        elif not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            out[action.dest] = command
    return out


def shown(text: str, args: argparse.Namespace | None) -> str:
    """Library text (a message, a warning, a note) with its settings spelled as `args`' command's flags."""
    return spell(text, getattr(args, "flags", None) or {})


def error_line(error: ConfigError, args: argparse.Namespace | None) -> str:
    return shown(error.raw, args)


def preset_help() -> str:
    from rainier_jax.spec.precision import PRESETS  # no JAX import
    return f"{', '.join(PRESETS)} (docs/PRECISION.md)"


def run_default(name: str):
    """The default of run setting `name`, as RunConfig has it (help strings show it, so it is
    written once)."""
    from rainier_jax.spec.run import RunConfig
    return RunConfig.__dataclass_fields__[name].default


def add_mesh_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lnc", type=int, default=None,
                   help="logical NeuronCore setting (trn2: 2 → 4 ranks per chip, 1 → 8); default from the mesh file")


def add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", default=None,
                   help=f"pipeline schedule: gpipe, 1f1b or interleaved [{run_default('schedule')}]")
    p.add_argument("--microbatches", type=int, default=None,
                   help="microbatches per data-parallel replica per step; with pp=1, gradient accumulation "
                        f"[{run_default('microbatches')}]")
    p.add_argument("--virtual-stages", type=int, default=None,
                   help=f"model chunks per pipeline device (interleaved schedule) [{run_default('virtual_stages')}]")
