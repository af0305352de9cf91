"""The compiled path of the performance model: the real train step's memory, dot FLOPs and
collectives (named by the parallel axes they span), read from XLA on emulated devices."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from programs import MINI8, RUN, TINY
from rainier_jax.perf import compiled
from rainier_jax.perf import flops
from rainier_jax.perf import hlo
from rainier_jax.perf import state_bytes
from rainier_jax.config.errors import ConfigError
from rainier_jax.parallel.layout import ParallelLayout, parse_layout
from rainier_jax.parallel.placement import place
from rainier_jax.spec.model import load_model
from rainier_jax.hardware.topology import load_topology, with_nodes
from rainier_jax.parallel.experiment import resolve
from rainier_jax.train.loop import build_program

DFT = "dp=2,fsdp=2,tp=2"


@pytest.fixture(scope="module")
def dft_profile():
    return compiled.profile_step(resolve(MINI8, TINY, parse_layout(DFT, 8), RUN))


@pytest.fixture(scope="module")
def dft_program():
    """The same step compiled the ordinary way (persistent cache on): fills the cache, or hits it."""
    return build_program(resolve(MINI8, TINY, DFT, RUN), with_eval=False)


def test_every_collective_is_named_by_the_axes_it_spans(dft_profile):
    axes_of = {(c.kind, c.axes) for c in dft_profile.collectives}
    assert not any("other" in axes for _, axes in axes_of), axes_of
    # FSDP gathers weights and reduce-scatters their gradients; tp reduces activations; dp
    # reduces the gradients of the fsdp shards.
    assert {("all-gather", ("fsdp",)), ("reduce-scatter", ("fsdp",)), ("all-reduce", ("tp",)),
            ("all-reduce", ("dp",))} <= axes_of
    for c in dft_profile.collectives:
        assert c.runs >= 1 and c.nbytes > 0 and c.group_size == len(c.groups[0]) == 2 ** len(c.axes)
    total = sum(c.runs * c.nbytes for c in dft_profile.collectives)
    assert sum(dft_profile.bytes_by().values()) == total


def test_memory_and_flops_match_the_analytic_counts(dft_profile, dft_program):
    """Argument bytes are the weights + optimizer state per rank (state_bytes), the batch shard and
    the state's scalar counters; dot FLOPs are the analytic hardware FLOPs split over 8 ranks."""
    layout = parse_layout(DFT, 8)
    state = state_bytes.state_bytes_per_rank(TINY, layout, RUN.policy)
    scalars = sum(a.dtype.itemsize for a in jax.tree.leaves(dft_program.abstract_state) if a.ndim == 0)
    batch = RUN.batch // layout.data_size * (RUN.seq + 1) * np.dtype(np.int32).itemsize
    p = dft_profile
    assert p.argument_bytes == state["weights"] + state["optimizer"] + scalars + batch
    assert p.dot_flops == flops.hardware_flops(TINY, batch=RUN.batch, seq=RUN.seq, remat=RUN.remat) / 8
    assert p.hbm_bytes == p.argument_bytes + p.output_bytes - p.alias_bytes + p.temp_bytes
    assert 0 < p.alias_bytes <= p.output_bytes and p.temp_bytes > 0 and p.compile_seconds > 0


def _dumped(program_dir) -> bool:
    return any(program_dir.glob("*after_spmd-partitioning*"))


def test_the_dump_happens_although_the_cache_holds_the_program(dft_program, dft_profile, tmp_path):
    """A persistent-cache hit skips compilation and the HLO dump (the cache key ignores dump
    options); profile_step must compile anyway, and leave the cache working."""
    assert jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir, \
        "tests/conftest.py enables the persistent compile cache this test is about"
    experiment = resolve(MINI8, TINY, DFT, RUN)

    def compile_with_dump(where):
        build_program(experiment, with_eval=False,
                      compiler_options={"xla_dump_to": str(where), "xla_dump_hlo_pass_re": "spmd-partitioning"})
        return _dumped(where)

    assert not compile_with_dump(tmp_path / "before"), "expected a cache hit (dft_program filled the cache)"
    again = compiled.profile_step(experiment)
    assert again.collectives == dft_profile.collectives and again.dot_flops == dft_profile.dot_flops
    assert jax.config.jax_enable_compilation_cache
    assert not compile_with_dump(tmp_path / "after"), "the persistent cache is not in use again"


def test_pipeline_sends_are_permutes_along_pp():
    run = dataclasses.replace(RUN, microbatches=2)
    p = compiled.profile_step(resolve(MINI8, TINY, parse_layout("dp=2,tp=2,pp=2", 8), run))
    permutes = [c for c in p.collectives if c.kind == "collective-permute"]
    assert permutes and all(c.axes == ("pp",) and c.pairs and c.groups == () for c in permutes)
    assert not any("other" in c.axes for c in p.collectives)
    assert {("all-reduce", ("tp",)), ("all-reduce", ("dp",))} <= set(p.bytes_by())


def test_tp_beyond_the_kv_heads_reduces_within_part_of_each_tp_group():
    """tp=8 over TINY's 4 kv heads: each kv head lives on 2 ranks, so GSPMD reduces k/v partial
    sums among ranks holding different heads — a sub-group of tp, named ("tp",) and partial."""
    p = compiled.profile_step(resolve(MINI8, TINY, parse_layout("tp=8", 8), RUN))
    assert not any("other" in c.axes for c in p.collectives)
    partial = [c for c in p.collectives if c.partial]
    assert partial and all(c.axes == ("tp",) and c.group_size < 8 for c in partial)
    assert all(c.group_size == 8 for c in p.collectives if not c.partial)


def test_hlo_device_numbers_are_positions_in_the_mesh():
    """Replica groups count devices by their place in the mesh, not by device id: a mesh holding
    the devices in a scrambled order must still attribute its groups to the right axis."""
    order = [7, 3, 5, 1, 6, 2, 4, 0]
    mesh = Mesh(np.array(jax.devices())[order].reshape(2, 4), ("a", "b"))
    x = jax.ShapeDtypeStruct((8, 64), jnp.float32, sharding=NamedSharding(mesh, P("a", "b")))
    step = jax.jit(lambda x: jnp.sum(x, axis=1), out_shardings=NamedSharding(mesh, P("a"))).lower(x).compile()
    # As a (pp, dp, fsdp, tp) placement: "a" is dp, "b" is tp.
    placement = np.array(order).reshape(1, 2, 1, 4)
    ranks = np.array([d.id for d in mesh.devices.flat])
    (ar,) = compiled.axis_collectives(hlo.parse_module(step.as_text()), ranks, placement)
    assert ar.axes == ("tp",) and sorted(map(sorted, ar.groups)) == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_attribute_picks_the_smallest_combination_of_real_axes():
    topo = load_topology("trn2-instance")     # 64 ranks: a placement that is not the identity
    layout = parse_layout("pp=2,dp=2,fsdp=4,tp=4", topo.num_ranks)
    placement = place(layout, topo)
    from rainier_jax.parallel.placement import axis_groups
    for axis in ("pp", "dp", "fsdp", "tp"):
        assert compiled.attribute(axis_groups(placement, axis)[::-1], placement) == (axis,)
    both = axis_groups(placement, ("dp", "fsdp"))
    assert compiled.attribute([g[::-1] for g in both], placement) == ("dp", "fsdp")
    assert compiled.attribute([[int(r)] for r in placement.flat], placement) == ()
    assert compiled.attribute([placement.flat[:3]], placement) == ("other",)
    # fsdp=1: a tp group is ("tp",), never ("fsdp", "tp").
    flat = place(parse_layout("dp=16,tp=4", topo.num_ranks), topo)
    assert compiled.attribute(axis_groups(flat, "tp"), flat) == ("tp",)
    # Every other rank of each tp group: no axis, but inside tp.
    halves = [g[i::2] for g in axis_groups(placement, "tp") for i in range(2)]
    assert compiled.attribute(halves, placement) == ("other",)
    assert compiled.containing_axes(halves, placement) == ("tp",)
    across = [np.concatenate([a[:2], b[:2]]) for a, b in zip(*[iter(axis_groups(placement, "tp"))] * 2)]
    assert compiled.containing_axes(across, placement) == ("fsdp", "tp")   # rows run fastest over fsdp
    stage = axis_groups(placement, "pp")
    assert compiled.attribute_pairs([(int(a), int(b)) for a, b in stage], placement) == ("pp",)


def test_refuses_what_one_process_cannot_compile(tmp_path):
    big = with_nodes(load_topology("trn2-ultraserver"), 16)
    assert big.num_ranks == 4096
    with pytest.raises(ConfigError, match=r"^compiled: 4,096 ranks exceed the 2,048 CPU devices"):
        compiled.check_compilable(TINY, big, ParallelLayout(dp=4096))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
                                "vocab_size": 256, "n_positions": 128}))
    with pytest.raises(ConfigError, match=r"^compiled: .*gpt2 model is for the analytic performance model only"):
        compiled.check_compilable(load_model(str(path)), MINI8, ParallelLayout(dp=8))
    compiled.check_compilable(TINY, MINI8, ParallelLayout(dp=8))   # fine


def test_needs_exactly_the_meshs_devices():
    sixteen = load_topology("trn2-mini-16")
    with pytest.raises(ConfigError, match="^compiled: the mesh has 16 ranks but JAX has 8 cpu devices"):
        compiled.profile_step(resolve(sixteen, TINY, parse_layout("dp=16", 16), RUN))
