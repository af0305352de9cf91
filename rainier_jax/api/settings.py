"""Which mesh `rj.emulate()` emulates: its arguments, the command line of `rainier run`, and the
defaults — settled without JAX, so `rainier run` checks its flags with the same code before the
script starts.

`rainier run` hands the settings it was given to the script's process in environment variables,
one per flag, set only for the flags given:

* `RAINIER_MESH`: `--mesh`, a built-in mesh name or the absolute path of a mesh file;
* `RAINIER_LNC`: `--lnc`, an integer;
* `RAINIER_PARALLEL`: `--parallel`, a layout such as `dp=2,tp=4`.

A setting the command line gives is the script's unless `rj.emulate()` is given the same setting
with another value: that contradiction is an EmulationError, never a quiet choice of one of them.
A setting neither gives takes the default: mesh `DEFAULT_MESH` at its file's LNC, dp over every
rank.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

from rainier_jax.api.errors import EmulationError
from rainier_jax.config.errors import ConfigError, spell
from rainier_jax.config.typed import resolve_named_file
from rainier_jax.hardware.topology import DEFAULT_MESH, Topology, load_topology
from rainier_jax.parallel.layout import ParallelLayout, parse_layout
from rainier_jax.parallel.placement import place

# setting → the environment variable `rainier run` passes it in
ENV = {"mesh": "RAINIER_MESH", "lnc": "RAINIER_LNC", "parallel": "RAINIER_PARALLEL"}


@dataclasses.dataclass(frozen=True, eq=False)
class Settled:
    """A mesh, a layout and the layout placed on it, checked together."""
    topology: Topology
    layout: ParallelLayout
    placement: np.ndarray   # as `place` returns it: the rank at each [pp, dp, fsdp, tp] position


def resolve(mesh: str | None, parallel: str | None, lnc: int | None) -> Settled:
    """Load the mesh (`DEFAULT_MESH` for None) at `lnc`, read the layout (None: dp over every rank)
    and place it, with the checks and messages of `rainier train`; a ConfigError's settings are
    marked (`mesh`, `lnc`, `parallel`) for the caller to spell."""
    topology = load_topology(mesh or DEFAULT_MESH, lnc=lnc)
    layout = parse_layout(parallel, topology.num_ranks)
    return Settled(topology, layout, place(layout, topology))


def mesh_for_env(mesh: str) -> str:
    """How `rainier run` passes a mesh: a built-in name as it is, a file as an absolute path (the
    script may change its working directory)."""
    path = resolve_named_file(mesh, "meshes", "mesh")
    return str(path.resolve()) if path.stem != mesh else mesh


def to_env(mesh: str | None, lnc: int | None, parallel: str | None) -> dict[str, str]:
    """The environment variables `rainier run` sets for the flags it was given (None: not given)."""
    given = {"mesh": None if mesh is None else mesh_for_env(mesh), "lnc": lnc, "parallel": parallel}
    return {ENV[k]: str(v) for k, v in given.items() if v is not None}


def from_env(environ: Mapping[str, str] | None = None) -> dict:
    """The settings `rainier run` gave, by setting name (absent: not given)."""
    env = os.environ if environ is None else environ
    out: dict = {k: env[var] for k, var in ENV.items() if env.get(var)}
    if "lnc" in out:
        try:
            out["lnc"] = int(out["lnc"])
        except ValueError:
            raise EmulationError(f"{ENV['lnc']}={out['lnc']!r}: must be an integer (rainier run sets it "
                                 "from --lnc)") from None
    return out


def _same_mesh(a: str, b: str) -> bool:
    return resolve_named_file(a, "meshes", "mesh").resolve() == resolve_named_file(b, "meshes", "mesh").resolve()


def _contradiction(name: str, mine, theirs) -> EmulationError:
    return EmulationError(f"{name} {mine}: contradicts rainier run --{name} {theirs}; leave {name} out of "
                          f"rj.emulate() to take the command line's, or run the script with --{name} {mine}")


def settle(mesh: str | None = None, parallel: str | None = None, lnc: int | None = None, *,
           environ: Mapping[str, str] | None = None) -> Settled:
    """`rj.emulate()`'s arguments settled against `rainier run`'s command line (module
    docstring): the Settled mesh, or an EmulationError naming the argument — or, for a value the
    command line gave, its flag — and the fix."""
    command_line = from_env(environ)
    if lnc is not None and (isinstance(lnc, bool) or not isinstance(lnc, int)):
        raise EmulationError(f"lnc {lnc!r}: must be an integer (or None for the mesh file's default)")
    mine = {"mesh": mesh, "lnc": lnc, "parallel": parallel}
    # How messages name each setting: the argument, or the flag of `rainier run` it came from.
    names = {k: f"rainier run --{k}" for k in command_line if mine[k] is None}
    try:
        if mesh is not None and "mesh" in command_line and not _same_mesh(mesh, command_line["mesh"]):
            raise _contradiction("mesh", mesh, command_line["mesh"])
        if lnc is not None and "lnc" in command_line and lnc != command_line["lnc"]:
            raise _contradiction("lnc", lnc, command_line["lnc"])
        chosen = {k: v if v is not None else command_line.get(k) for k, v in mine.items()}
        settled = resolve(chosen["mesh"], chosen["parallel"], chosen["lnc"])
        if parallel is not None and "parallel" in command_line:
            try:
                theirs = parse_layout(command_line["parallel"], settled.topology.num_ranks)
            except ConfigError:   # made for the command line's mesh, not this one
                theirs = None
            if theirs != settled.layout:
                raise _contradiction("parallel", parallel, command_line["parallel"])
        return settled
    except EmulationError:
        raise
    except ConfigError as e:
        raise EmulationError(spell(e.raw, names)) from None

