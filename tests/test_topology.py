"""Mesh files and rainier_jax.hardware.topology: rank numbering, neighbours, link classes, bad input.

Pure Python: nothing here imports JAX.
"""

from pathlib import Path

import pytest

from rainier_jax.config.errors import ConfigError, spell
from rainier_jax.config.typed import builtin_dir
from rainier_jax.hardware.topology import LINK_CLASSES, Coord, load_topology

MESHES = {  # name → ranks at the default LNC
    "trn2-instance": 64,
    "trn2-ultraserver": 256,
    "trn1-instance": 32,
    "trn2-mini-8": 8,
    "trn2-mini-16": 16,
}


@pytest.mark.parametrize("name,ranks", MESHES.items())
def test_rank_counts(name, ranks):
    topo = load_topology(name)
    assert topo.num_ranks == ranks
    assert topo.name == name


def test_topology_is_hashable_and_comparable():
    a, b = load_topology("trn2-mini-8"), load_topology("trn2-mini-8")
    assert a == b and hash(a) == hash(b)
    assert a != load_topology("trn2-mini-16")


def test_lnc1_doubles_trn2_ranks():
    assert load_topology("trn2-instance", lnc=1).num_ranks == 128
    assert load_topology("trn2-ultraserver", lnc=1).num_ranks == 512
    assert load_topology("trn2-instance", lnc=2).num_ranks == 64


def test_hbm_per_rank():
    gib = 2**30
    assert load_topology("trn2-instance").hbm_bytes_per_rank == 24 * gib
    assert load_topology("trn2-instance", lnc=1).hbm_bytes_per_rank == 12 * gib
    # The reduced mesh has 2 ranks per chip, so each owns half a chip.
    assert load_topology("trn2-mini-8").hbm_bytes_per_rank == 48 * gib
    assert load_topology("trn1-instance").hbm_bytes_per_rank == 16 * gib


def test_trn2_numbering_matches_neuron():
    topo = load_topology("trn2-instance")
    for chip in range(16):
        y, x = divmod(chip, 4)
        for core in range(4):
            r = 4 * chip + core
            assert topo.coord(r) == Coord(0, x, y, core)
            assert topo.rank(0, x, y, core) == r
    assert topo.chip_ranks(0, 1, 1) == [20, 21, 22, 23]
    assert topo.chip_of(23) == (0, 1, 1)


def test_trn1_numbering_two_per_chip():
    topo = load_topology("trn1-instance")
    assert topo.ranks_per_chip == 2
    assert topo.coord(0) == Coord(0, 0, 0, 0)
    assert topo.coord(1) == Coord(0, 0, 0, 1)
    assert topo.coord(2) == Coord(0, 1, 0, 0)
    assert topo.coord(9) == Coord(0, 0, 1, 1)  # chip 4 = (x=0, y=1)


def test_ultraserver_instance_offset():
    topo = load_topology("trn2-ultraserver")
    assert topo.coord(64) == Coord(1, 0, 0, 0)
    assert topo.rank(instance=3, x=3, y=3, core=3) == 255


@pytest.mark.parametrize("name", MESHES)
def test_coord_rank_round_trip(name):
    for lnc in load_topology(name).lnc_options:
        topo = load_topology(name, lnc=lnc)
        for r in range(topo.num_ranks):
            c = topo.coord(r)
            assert topo.rank(c) == r
            assert topo.rank(c.instance, c.x, c.y, c.core) == r


def test_out_of_range_raises_value_error():
    topo = load_topology("trn2-mini-8")
    for bad in (-1, 8):
        with pytest.raises(ValueError):
            topo.coord(bad)
        with pytest.raises(ValueError):
            topo.link(0, bad)
    with pytest.raises(ValueError):
        topo.rank(0, 2, 0, 0)  # x only 0..1
    with pytest.raises(ValueError):
        topo.rank(Coord(0, 0, 0, 2))  # 2 cores per chip


def _chip(topo, chip, instance=0):
    y, x = divmod(chip, topo.torus[0])
    return (instance, x, y)


def test_trn2_torus_neighbours():
    topo = load_topology("trn2-instance")
    def neighbours(chip):
        return {y * 4 + x for _, x, y in topo.chip_neighbours(*_chip(topo, chip))}
    assert neighbours(0) == {1, 3, 4, 12}
    assert neighbours(5) == {4, 6, 1, 9}
    for chip in range(16):
        assert len(neighbours(chip)) == 4


def test_small_dimensions():
    mini8 = load_topology("trn2-mini-8")  # torus [2, 1], 2 instances
    # X of size 2 → one neighbour, Y of size 1 → none, instance ring of 2 → one.
    assert mini8.chip_neighbours(0, 0, 0) == {(0, 1, 0), (1, 0, 0)}
    mini16 = load_topology("trn2-mini-16")  # 4 instances: a real ring
    assert mini16.chip_neighbours(0, 1, 0) == {(0, 0, 0), (1, 1, 0), (3, 1, 0)}


def test_ultraserver_z_ring_neighbours():
    topo = load_topology("trn2-ultraserver")
    for x in range(4):
        for y in range(4):
            n = topo.chip_neighbours(0, x, y)
            assert len(n) == 6
            assert {c for c in n if c[0] != 0} == {(1, x, y), (3, x, y)}


def test_single_instance_has_no_z_neighbours():
    topo = load_topology("trn2-instance")
    assert all(i == 0 for i, _, _ in topo.chip_neighbours(0, 2, 2))


def test_link_classes_trn2():
    topo = load_topology("trn2-instance")
    assert topo.link(5, 5).cls is None and topo.link(5, 5).hops == 0
    same_chip = topo.link(0, 3)
    assert same_chip.cls.name == "on_chip" and same_chip.direct
    def chip_link(a, b):
        return topo.link(4 * a, 4 * b + 1)
    assert (chip_link(0, 1).cls.name, chip_link(0, 1).hops) == ("torus", 1)
    assert chip_link(0, 1).direct
    assert (chip_link(0, 5).cls.name, chip_link(0, 5).hops) == ("torus", 2)
    assert (chip_link(0, 2).cls.name, chip_link(0, 2).hops) == ("torus", 2)
    assert chip_link(0, 3).hops == 1  # wraparound in X
    assert chip_link(0, 12).hops == 1  # wraparound in Y
    assert chip_link(0, 10).hops == 4  # farthest chip: (2, 2)
    assert not chip_link(0, 5).direct
    assert topo.link(4, 0) == topo.link(0, 4)


def test_link_classes_ultraserver():
    topo = load_topology("trn2-ultraserver")
    def at(instance, x, y, core=0):
        return topo.rank(instance, x, y, core)
    one = topo.link(at(0, 1, 2), at(1, 1, 2))
    assert (one.cls.name, one.hops) == ("ring", 1)
    two = topo.link(at(0, 1, 2), at(2, 1, 2))
    assert (two.cls.name, two.hops) == ("ring", 2)
    assert topo.link(at(0, 0, 0), at(3, 0, 0)).hops == 1  # ring wraps
    assert topo.link(at(0, 0, 0), at(1, 1, 1)).hops == 3  # ring 1 + torus 2


def test_mini8_link_between_instances():
    topo = load_topology("trn2-mini-8")
    assert topo.link(0, 1).cls.name == "on_chip"
    assert (topo.link(0, 2).cls.name, topo.link(0, 2).hops) == ("torus", 1)
    assert (topo.link(0, 4).cls.name, topo.link(0, 4).hops) == ("ring", 1)


@pytest.mark.parametrize("name", MESHES)
def test_every_mesh_has_link_classes_and_figures(name):
    topo = load_topology(name)
    assert set(topo.links) == set(LINK_CLASSES)
    for link in topo.links.values():
        assert link.gbps > 0 and link.latency_us >= 0
    assert topo.peak_flops["bf16"] > 1e14  # FLOP/s, not TFLOP/s
    assert topo.hbm_bytes_per_chip > 2**30
    # Every figure in the file carries a source: a citation, "assumption" or "derived".
    text = (builtin_dir("meshes") / f"{name}.toml").read_text()
    for line in text.splitlines():
        code = line.split("#", 1)[0].strip()
        if "=" in code and not code.startswith(("[", "name", "description")):
            assert "#" in line, f"{name}: figure without a source comment: {line!r}"


def test_trn2_figures():
    topo = load_topology("trn2-instance")
    assert topo.peak_flops["bf16"] == 667e12
    assert topo.peak_flops["fp8"] == 1299e12
    assert topo.hbm_bytes_per_chip == 96 * 2**30
    # derived per-link split: 4 X/Y links of 256 GB/s and 2 Z links of 128 GB/s = 1.28 TB/s per chip
    assert 4 * topo.links["torus"].gbps + 2 * topo.links["ring"].gbps == 1280


# ---- bad input ----

GOOD = (builtin_dir("meshes") / "trn2-mini-8.toml").read_text()


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "mesh.toml"
    p.write_text(text)
    return str(p)


def _error(tmp_path, text, lnc=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_topology(_write(tmp_path, text), lnc=lnc)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_good_copy_loads(tmp_path):
    assert load_topology(_write(tmp_path, GOOD)).num_ranks == 8


def test_unknown_key(tmp_path):
    msg = _error(tmp_path, "colour = 'red'\n" + GOOD)
    assert "unknown key 'colour'" in msg


def test_unknown_nested_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace("hbm_gib = 96.0", "hbm_gib = 96.0\nhbm_tib = 1.0"))
    assert "chip" in msg and "hbm_tib" in msg


def test_wrong_type(tmp_path):
    msg = _error(tmp_path, GOOD.replace("instances = 2 ", 'instances = "two" '))
    assert "instances" in msg and "integer" in msg


def test_missing_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace("default_lnc = 2", ""))
    assert "default_lnc" in msg and "missing" in msg


def test_missing_link_class(tmp_path):
    text = GOOD.split("[links.efa]")[0]
    msg = _error(tmp_path, text)
    assert "links.efa" in msg


def test_zero_instances(tmp_path):
    msg = _error(tmp_path, GOOD.replace("instances = 2 ", "instances = 0 "))
    assert "instances" in msg


def test_torus_not_two_dims(tmp_path):
    msg = _error(tmp_path, GOOD.replace("torus = [2, 1]", "torus = [2, 1, 1]"))
    assert "torus" in msg and "[X, Y]" in msg


def test_non_positive_link(tmp_path):
    msg = _error(tmp_path, GOOD.replace("gbps = 128.0", "gbps = 0.0"))
    assert "links.ring" in msg and "gbps" in msg


def test_missing_bf16(tmp_path):
    msg = _error(tmp_path, GOOD.replace("bf16 = 667.0", ""))
    assert "bf16" in msg


def test_bad_lnc_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace("\n2 = 2 ", "\ntwo = 2 "))
    assert "ranks_per_chip" in msg


def test_unsupported_lnc():
    with pytest.raises(ConfigError) as e:
        load_topology("trn2-instance", lnc=3)
    assert as_flags(e.value.raw) == "--lnc 3: trn2-instance supports --lnc 1 or 2"
    with pytest.raises(ConfigError) as e:
        load_topology("trn2-mini-8", lnc=1)
    assert "--lnc 1" in as_flags(e.value.raw) and "only --lnc 2" in as_flags(e.value.raw)


def as_flags(text: str) -> str:
    """A library message (ConfigError.raw, a note) as the CLI spells its settings: `--name`."""
    return spell(text, lambda name: "--" + name.replace("_", "-"))


def test_unknown_name_lists_builtins():
    with pytest.raises(ConfigError) as e:
        load_topology("trn9-galaxy")
    msg = str(e.value)
    assert "trn9-galaxy" in msg
    for name in MESHES:
        assert name in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError):
        load_topology(str(tmp_path / "absent.toml"))


def test_not_toml(tmp_path):
    msg = _error(tmp_path, "this is [not toml")
    assert "TOML" in msg
