"""Shared test helpers: build a compiled program for a layout of trn2-mini-8 (or one device)."""

from rainier_jax.spec.model import load_model
from rainier_jax.spec.run import RunConfig
from rainier_jax.hardware.topology import load_topology
from rainier_jax.parallel.experiment import resolve, single_device
from rainier_jax.train.loop import build_program

MINI8 = load_topology("trn2-mini-8")
TINY = load_model("tiny")
RUN = RunConfig(steps=3, batch=16, seq=64, eval_every=0)


def program_for(text: str, model=TINY, run=RUN):
    if text == "single":
        return build_program(single_device(model, run))
    return build_program(resolve(MINI8, model, text, run))
