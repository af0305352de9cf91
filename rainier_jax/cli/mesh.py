"""`rainier mesh list` and `rainier mesh show`: the built-in meshes, and a picture of one with a
layout placed on it."""

from __future__ import annotations

from rainier_jax.cli.flags import add_mesh_flags
from rainier_jax.cli.parser import Parser
from rainier_jax.config.typed import builtin_names


def add_parser(sub) -> None:
    mesh = sub.add_parser("mesh", help="inspect hardware meshes")
    mesh_sub = mesh.add_subparsers(dest="mesh_command", required=True, parser_class=Parser)
    show = mesh_sub.add_parser("show", help="draw a mesh and where a layout's axes land")
    show.add_argument("name", help=f"built-in mesh name or path to a .toml ({', '.join(builtin_names('meshes'))})")
    show.add_argument("--parallel", default=None, help="layout to place, e.g. dp=2,fsdp=2,tp=2")
    add_mesh_flags(show)
    show.set_defaults(func=cmd_mesh_show)
    lst = mesh_sub.add_parser("list", help="list the built-in meshes")
    lst.set_defaults(func=cmd_mesh_list)


def cmd_mesh_list(args) -> int:
    from rainier_jax.hardware.topology import load_topology
    for name in builtin_names("meshes"):
        topo = load_topology(name)
        print(f"{name:<18} {topo.num_ranks:>4} ranks  {topo.instances} × {topo.torus[0]}×{topo.torus[1]} chips "
              f"× {topo.ranks_per_chip} ranks per chip")
    return 0


def cmd_mesh_show(args) -> int:
    from rainier_jax.parallel.layout import parse_layout
    from rainier_jax.parallel.placement import place
    from rainier_jax.parallel.placement_view import render_mesh
    from rainier_jax.hardware.topology import load_topology

    topo = load_topology(args.name, lnc=args.lnc, setting="name")
    layout = None if args.parallel is None else parse_layout(args.parallel, topo.num_ranks)
    placement = None if layout is None else place(layout, topo)  # validated before printing anything
    print(render_mesh(topo, layout, placement))
    return 0
