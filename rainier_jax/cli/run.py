"""`rainier run SCRIPT [--mesh M] [--lnc N] [--parallel L] [--processes N] [-- ARGS…]`: a user's
own Python script on an emulated mesh.

The script runs in a child process exactly as `python SCRIPT ARGS` would run it (`__name__` is
"__main__", `sys.argv[1:]` is ARGS, the script's folder comes first on sys.path, its exit code and
traceback are its own), with the flags given passed in environment variables, so that its
`rj.emulate()` takes them (rainier_jax/api/settings.py names the variables). The flags are checked
first, with the messages of `rainier train`: bad input is one line and exit code 2, and the
script never starts. With `--processes N` the script runs as N `jax.distributed` processes, each
owning whole instances, through the launcher `rainier launch` uses (rainier_jax/dist/launcher.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from rainier_jax.cli.flags import add_mesh_flags
from rainier_jax.config.errors import ConfigError, setting


def add_parser(sub) -> None:
    from rainier_jax.api.settings import DEFAULT_MESH, ENV
    variables = ", ".join(f"{var} (--{name})" for name, var in ENV.items())
    ru = sub.add_parser(
        "run", rest="script_args", usage="rainier run SCRIPT.py [options] [-- ARGS ...]",
        help="run your own Python script on an emulated mesh (its rj.emulate() takes these flags)",
        description="Run SCRIPT.py as `python SCRIPT.py ARGS` would, in a child process whose "
                    "rj.emulate() gives the mesh these flags describe. The flags given are passed in "
                    f"the environment variables {variables}.")
    ru.add_argument("script", metavar="SCRIPT.py", help="the Python script to run; its own arguments go after --")
    ru.add_argument("--mesh", default=None, help=f"mesh name or path [{DEFAULT_MESH}]")
    add_mesh_flags(ru)
    ru.add_argument("--parallel", default=None,
                    help="layout dp=..,fsdp=..,tp=..,pp=.. (omitted axes are 1; product = mesh ranks) [dp = all ranks]")
    ru.add_argument("--script-uses-pp", action="store_true",
                    help="allow pp > 1: the script itself runs its pipeline stages over the pp axis "
                         "(rainier does not pipeline a script's own code)")
    ru.add_argument("--processes", type=int, default=None,
                    help="run the script as N jax.distributed processes, each owning mesh-instances/N "
                         "emulated instances (as rainier launch does) [one process]")
    ru.add_argument("--port", type=int, default=None,
                    help="coordinator port on 127.0.0.1, with --processes [a free one]")
    ru.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    """Check the flags and the script (one line, exit 2, nothing started), then run it and return
    its exit code."""
    from rainier_jax.api import settings

    script = Path(args.script)
    if not script.exists():
        raise ConfigError(f"run: {args.script}: no such file (give the path of a Python script)")
    if not script.is_file():
        raise ConfigError(f"run: {args.script}: not a file (give the path of a Python script)")
    settled = settings.resolve(args.mesh, args.parallel, args.lnc)
    if settled.layout.pp > 1 and not args.script_uses_pp:
        raise ConfigError(f"{setting('parallel')} {args.parallel}: pp={settled.layout.pp}, but rainier does not "
                          "pipeline a script's own code; use pp=1, or pass "
                          f"{setting('script_uses_pp')} if the script itself runs its stages over the pp axis")
    env = settings.to_env(args.mesh, args.lnc, args.parallel)
    argv = [sys.executable, args.script, *args.script_args]
    if args.processes is None:
        if args.port is not None:
            raise ConfigError(f"{setting('port')} {args.port}: needs {setting('processes')} N (the coordinator "
                              "joins several processes)")
        return _run_one(argv, env)
    return _run_processes(args, settled.topology, argv, env)


def _run_one(argv: list[str], env: dict[str, str]) -> int:
    """The script in one child process. Ctrl-C reaches it from the terminal (it shares this
    process's group) and is its to handle, so this process only waits; a SIGTERM sent here is
    passed on. A child ended by a signal exits 128 + its number, as a shell reports it."""
    child = subprocess.Popen(argv, env={**os.environ, **env})
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: None),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))}
    try:
        code = child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 - code if code < 0 else code


def _run_processes(args, topo, argv: list[str], env: dict[str, str]) -> int:
    from rainier_jax.dist import cluster as cluster_lib
    from rainier_jax.dist import launcher

    if args.processes < 1:
        raise ConfigError(f"{setting('processes')} {args.processes}: must be at least 1")
    cluster_lib.check_topology(cluster_lib.Cluster(None, args.processes, 0, setting("processes")), topo,
                               subject=f"{setting('processes')} {args.processes}")
    if args.port is not None:
        launcher.check_port(args.port)
    port = args.port or launcher.free_port()
    try:
        return launcher.run(args.processes, argv, port, env=env, name="rainier run",
                            shown=" ".join([args.script, *args.script_args]))
    except ConfigError as e:   # the coordination service could not start
        raise ConfigError(f"run: {e.raw}") from None
