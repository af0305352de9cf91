"""Shared test helpers: build a compiled program for a layout of trn2-mini-8 (or one device)."""

from rainier_jax.parallel.layout import ParallelLayout, parse_layout, place
from rainier_jax.spec.model import load_model
from rainier_jax.spec.run import RunConfig
from rainier_jax.hardware.topology import load_topology
from rainier_jax.train.loop import build_program, mesh_on_ranks

MINI8 = load_topology("trn2-mini-8")
TINY = load_model("tiny")
RUN = RunConfig(steps=3, batch=16, seq=64, eval_every=0)


def program_for(text: str, model=TINY, run=RUN):
    if text == "single":
        return build_program(model, ParallelLayout(), mesh_on_ranks(ParallelLayout(), None), run)
    layout = parse_layout(text, MINI8.num_ranks)
    return build_program(model, layout, mesh_on_ranks(layout, place(layout, MINI8)), run)
