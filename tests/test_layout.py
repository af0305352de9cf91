"""Placement of parallel axes on the topology, layout validation, and parameter shardings."""

import jax
import pytest

from rainier_jax.parallel import sharding
from rainier_jax.config.errors import ConfigError, spell
from rainier_jax.parallel.layout import AXES, ParallelLayout, parse_layout, validate_batch, validate_for_model
from rainier_jax.parallel.placement import axis_groups, axis_links, place, tp_ring_warnings
from rainier_jax.hardware.topology import load_topology
from rainier_jax.parallel.experiment import resolve
from rainier_jax.spec.run import RunConfig
from rainier_jax.spec.model import load_model, param_shapes

MINI8 = load_topology("trn2-mini-8")
TRN2 = load_topology("trn2-instance")
ULTRA = load_topology("trn2-ultraserver")
TINY = load_model("tiny")


def test_parse_defaults_and_omitted_axes():
    assert parse_layout(None, 8) == ParallelLayout(dp=8)
    assert parse_layout("dp=2,tp=4", 8) == ParallelLayout(dp=2, tp=4)
    assert parse_layout(" fsdp = 8 ", 8) == ParallelLayout(fsdp=8)


@pytest.mark.parametrize("text,needle", [
    ("dp=4", "multiply to 4"), ("dp=0,tp=8", "positive"), ("xp=8", "unknown axis"),
    ("dp8", "cannot read"), ("dp=2,dp=4", "twice"),
])
def test_parse_errors(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_layout(text, 8)


def test_pp_parses():
    assert parse_layout("pp=2,dp=4", 8) == ParallelLayout(pp=2, dp=4)


@pytest.mark.parametrize("layout,needle", [
    (ParallelLayout(tp=16), "n_heads"),        # 8 query heads
    (ParallelLayout(tp=3, dp=1), "n_heads"),
    (ParallelLayout(fsdp=256), "d_model"),     # 128
])
def test_model_validation(layout, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_for_model(layout, TINY)


def test_kv_heads_must_divide_or_be_divided_by_tp():
    from dataclasses import replace
    cfg = replace(TINY, n_heads=12, n_kv_heads=3, d_model=192, mlp_dim=384, head_dim=16, vocab_size=384)
    validate_for_model(ParallelLayout(tp=3), cfg)    # kv heads split
    validate_for_model(ParallelLayout(tp=6), cfg)    # kv heads replicated in pairs
    with pytest.raises(ConfigError, match="n_kv_heads"):
        validate_for_model(ParallelLayout(tp=4), cfg)


def test_batch_validation():
    validate_batch(ParallelLayout(dp=2, fsdp=2, tp=2), 4)
    with pytest.raises(ConfigError) as info:
        validate_batch(ParallelLayout(dp=4, tp=2), 6)
    assert "--batch 6" in as_flags(info.value.raw)


def as_flags(text: str) -> str:
    """A library message (ConfigError.raw, a note) as the CLI spells its settings: `--name`."""
    return spell(text, lambda name: "--" + name.replace("_", "-"))


@pytest.mark.parametrize("topo,text", [
    (MINI8, "dp=8"), (MINI8, "fsdp=8"), (MINI8, "tp=8"), (MINI8, "dp=2,fsdp=2,tp=2"),
    (TRN2, "fsdp=16,tp=4"), (TRN2, "dp=4,tp=16"), (TRN2, "pp=4,dp=4,tp=4"), (ULTRA, "fsdp=64,tp=4"),
    (ULTRA, "pp=4,fsdp=16,tp=4"), (ULTRA, "dp=2,fsdp=8,tp=16"),
])
def test_placement_is_a_permutation(topo, text):
    layout = parse_layout(text, topo.num_ranks)
    p = place(layout, topo)
    assert p.shape == tuple(getattr(layout, a) for a in AXES)
    assert sorted(p.ravel().tolist()) == list(range(topo.num_ranks))


def test_mini8_default_layout_places_tp_on_chip_fsdp_on_torus_dp_on_ring():
    layout = ParallelLayout(dp=2, fsdp=2, tp=2)
    p = place(layout, MINI8)
    # rank = (instance·2 + x)·2 + core
    assert axis_groups(p, "tp").tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert axis_groups(p, "fsdp").tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert axis_groups(p, "dp").tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    links = {al.axis: al.slowest for al in axis_links(layout, MINI8, p)}
    assert links == {"tp": "on_chip", "fsdp": "torus", "dp": "ring"}


def _tp_warnings(layout):
    return tp_ring_warnings(layout, TRN2, place(layout, TRN2))


def test_tp_takes_cores_then_torus_row():
    p = place(ParallelLayout(dp=4, tp=16), TRN2)
    groups = axis_groups(p, "tp")
    assert groups[0].tolist() == list(range(16))        # chips 0–3: one torus row
    assert {TRN2.chip_of(int(r)) for r in groups[1]} == {(0, x, 1) for x in range(4)}
    assert _tp_warnings(ParallelLayout(dp=4, tp=16)) == []
    assert _tp_warnings(ParallelLayout(dp=16, tp=4)) == []


def test_tp_groups_that_are_not_rings_warn():
    # Two chips are a line, not a ring (neuronx-distributed: 8×8 is unsupported on trn2).
    w = _tp_warnings(ParallelLayout(dp=8, tp=8))
    assert len(w) == 1 and "not rings" in w[0] and "two chips" in w[0]
    # tp=32 in rank order runs row 0 then row 1: chip 3 → chip 4 is not a torus link.
    w = _tp_warnings(ParallelLayout(dp=2, tp=32))
    assert len(w) == 1 and "not directly linked" in w[0]


def test_pp_takes_instances_first_then_torus():
    p = place(ParallelLayout(pp=4, fsdp=16, tp=4), ULTRA)
    for stage in range(4):
        assert {ULTRA.coord(int(r)).instance for r in p[stage].ravel()} == {stage}
    p = place(ParallelLayout(pp=2, dp=8, tp=4), TRN2)
    for stage in range(2):   # the slow half of the y dimension: rows {0,1} and {2,3}
        assert {TRN2.coord(int(r)).y // 2 for r in p[stage].ravel()} == {stage}


def test_fsdp_gets_faster_links_than_dp():
    p = place(ParallelLayout(dp=2, fsdp=32), TRN2)
    fsdp_groups, dp_groups = axis_groups(p, "fsdp"), axis_groups(p, "dp")
    assert all(TRN2.coord(int(r)).y < 2 for r in fsdp_groups[0])       # one half of the torus
    assert TRN2.coord(int(dp_groups[0][1])).y == 2                    # dp crosses halves


# Expected per-device shard shapes of the tiny model (L=8, D=128, H=8, G=4, K=16, F=512, V=256).
SHARD_SHAPES = {
    "dp=8": {"embed": (256, 128), "wq": (8, 128, 8, 16), "wk": (8, 128, 4, 16), "wo": (8, 8, 16, 128),
             "w_up": (8, 128, 512), "w_down": (8, 512, 128), "head": (128, 256), "attn_norm": (8, 128)},
    "fsdp=8": {"embed": (256, 16), "wq": (8, 16, 8, 16), "wk": (8, 16, 4, 16), "wo": (8, 8, 16, 16),
               "w_up": (8, 16, 512), "w_down": (8, 512, 16), "head": (16, 256), "attn_norm": (8, 128)},
    # tp=8 exceeds the 4 kv heads: k/v weights stay whole on every rank.
    "tp=8": {"embed": (32, 128), "wq": (8, 128, 1, 16), "wk": (8, 128, 4, 16), "wo": (8, 1, 16, 128),
             "w_up": (8, 128, 64), "w_down": (8, 64, 128), "head": (128, 32), "attn_norm": (8, 128)},
    "dp=2,fsdp=2,tp=2": {"embed": (128, 64), "wq": (8, 64, 4, 16), "wk": (8, 64, 2, 16),
                         "wo": (8, 4, 16, 64), "w_up": (8, 64, 256), "w_down": (8, 256, 64),
                         "head": (64, 128), "attn_norm": (8, 128)},
}


@pytest.mark.parametrize("text", list(SHARD_SHAPES))
def test_parameter_shard_shapes(text):
    layout = parse_layout(text, 8)
    mesh = resolve(MINI8, TINY, layout, RunConfig()).mesh
    shards = sharding.param_shardings(mesh, layout, TINY)
    shapes = param_shapes(TINY)
    flat = {path[-1].key: (s, shp) for (path, s), (_, shp) in zip(
        jax.tree_util.tree_flatten_with_path(shards)[0],
        jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0])}
    for name, expected in SHARD_SHAPES[text].items():
        s, shape = flat[name]
        assert s.shard_shape(shape) == expected, name


def test_matrix_layouts_include_pipelines():
    from rainier_jax.parallel.placement import admissible_layouts
    layouts = admissible_layouts(MINI8, TINY, 16, microbatches=None)
    assert len(layouts) == len(set(layouts)) == 20      # every factorisation of 8 over 4 axes the model admits
    assert ParallelLayout(pp=8) in layouts and ParallelLayout(pp=2, dp=2, tp=2) in layouts
    # With one microbatch, 1F1B admits no pipeline layout.
    assert all(l.pp == 1 for l in admissible_layouts(MINI8, TINY, 16, microbatches=1))
