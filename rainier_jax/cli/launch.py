"""`rainier launch --processes N [--port P] -- train|parity …`: check the launch and the command it
wraps, then run the command as N local processes (rainier_jax/dist/launcher.py starts, relays and
ends them; docs/CLUSTER.md).

Nothing starts until the command is known to be valid: the launch's own flags and the wrapped
command's flags are checked here, then a dry run of the command as process 0 sees it
(`CHECK_ONLY_ENV`) reports any other bad input once, rather than once per process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from rainier_jax.cli import flags, parity, train
from rainier_jax.cli.common import CHECK_ONLY_ENV, DEFAULT_MESH
from rainier_jax.cli.parser import Parser
from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.dist import launcher

# The commands launch wraps, each with the module that adds its flags.
COMMANDS = {"train": train, "parity": parity}


def add_parser(sub) -> None:
    la = sub.add_parser("launch", help="run train or parity as N local processes on JAX's multi-controller runtime")
    la.add_argument("--processes", type=int, required=True,
                    help="processes, each owning mesh-instances/N emulated instances (N must divide them)")
    la.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 [a free one]")
    la.add_argument("command", nargs=argparse.REMAINDER, help="-- train|parity [their options]")
    la.set_defaults(func=cmd_launch)


def _wrapped_parser() -> argparse.ArgumentParser:
    """`rainier` as far as the wrapped commands go: their flags, errors and flag tables exactly as
    `rainier train` / `rainier parity` have them (each module adds its own flags), without the
    dispatcher."""
    parser = Parser(prog="rainier")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in COMMANDS.items():
        module.add_parser(sub)
        sub.choices[name].set_defaults(flags=flags.table(sub.choices[name]))
    return parser


def _topology(inner: argparse.Namespace):
    """The mesh the wrapped command runs on (a resumed train's from its checkpoint). Its errors
    name the wrapped command's flags (`--mesh`, `--resume`), not launch's."""
    from pathlib import Path

    from rainier_jax.hardware.topology import load_topology

    mesh, lnc = inner.mesh, inner.lnc
    try:
        if inner.command == "train" and inner.resume and mesh is None and inner.checkpoint_dir:
            from rainier_jax.train.checkpoint import record
            saved = record.newest_intact(Path(inner.checkpoint_dir)).record.experiment
            mesh, lnc = saved.mesh, lnc or saved.lnc
        return load_topology(mesh or DEFAULT_MESH, lnc=lnc)
    except ConfigError as e:
        raise ConfigError(flags.shown(e.raw, inner)) from None


def cmd_launch(args) -> int:
    """Validate the launch and the command it wraps (one line, exit 2, nothing started), then run."""
    from rainier_jax.dist import cluster as cluster_lib

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("launch: give the command to run after --, e.g. rainier launch --processes 2 -- train")
    if command[0] not in COMMANDS:
        raise ConfigError(f"launch: cannot launch '{command[0]}' (choose {' or '.join(COMMANDS)})")
    if args.processes < 1:
        raise ConfigError(f"--processes {args.processes}: must be at least 1")
    inner = _wrapped_parser().parse_args(command)   # the command's own bad input, before any process starts
    topo = _topology(inner)
    processes = f"{setting('processes')} {args.processes}"
    cluster_lib.check_topology(cluster_lib.Cluster(None, args.processes, 0, setting("processes")), topo,
                               subject=processes)
    if args.port is not None:
        launcher.check_port(args.port)
    port = args.port or launcher.free_port()
    # A dry run of the command as process 0 sees it: bad input is reported once, not N times.
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(args.processes),
               JAX_PROCESS_ID="0", **{CHECK_ONLY_ENV: "1"})
    dry = subprocess.run([sys.executable, "-m", "rainier_jax.cli", *command], env=env, capture_output=True, text=True)
    if dry.returncode != 0:
        sys.stderr.write(dry.stderr)
        return dry.returncode
    # Process 0 draws the progress bar when this terminal would show one (its output is a pipe).
    from rainier_jax.train.metrics import BAR_ENV
    bar = sys.stderr.isatty() and not os.environ.get("CI")
    try:
        return launcher.run(args.processes, [sys.executable, "-m", "rainier_jax.cli", *command], port,
                            first_env={BAR_ENV: "1"} if bar else None, shown=" ".join(command))
    except ConfigError as e:   # the coordination service could not start
        raise ConfigError(f"launch: {e.raw}") from None
