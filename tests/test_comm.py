"""Collective pricing: the link class a group crosses on the trn2 torus, the UltraServer ring and
across nodes, and the algorithm formulas (rainier_jax/perf/collectives.py's docstring)."""

import math

import pytest

from rainier_jax.perf import collectives
from rainier_jax.parallel.layout import parse_layout
from rainier_jax.parallel.placement import axis_groups, place
from rainier_jax.hardware.topology import load_topology, with_nodes

INSTANCE = load_topology("trn2-instance")          # 64 ranks: rank = chip·4 + core, chip = y·4 + x
ULTRA = load_topology("trn2-ultraserver")          # 256 ranks: 4 instances in a Z ring


@pytest.mark.parametrize("topo,group,cls", [
    (INSTANCE, [0, 1, 2, 3], "on_chip"),                        # the 4 ranks of chip 0
    (INSTANCE, [0, 4, 8, 12], "torus"),                         # core 0 of the chips of row y=0
    (INSTANCE, list(range(0, 64, 4)), "torus"),                 # all 16 chips
    (ULTRA, [0, 64, 128, 192], "ring"),                         # chip (0,0) of each instance: the Z ring
    (ULTRA, [0, 1, 2, 3, 64, 65, 66, 67], "ring"),              # a group that leaves its instance
    (with_nodes(INSTANCE, 2), [0, 64], "efa"),                  # two trn2 instances over EFA
    (with_nodes(ULTRA, 2), [5, 256 + 5], "efa"),
])
def test_group_link_class(topo, group, cls):
    assert collectives.group_link(topo, group).name == cls


def test_placed_axes_cross_the_expected_links():
    """70B-style layout on 4 UltraServers: tp inside the chip, fsdp over the UltraServer (its
    groups span the 4 instances, so they are priced at the Z-ring rate), dp across nodes (EFA)."""
    topo = with_nodes(ULTRA, 4)
    layout = parse_layout("tp=4,fsdp=64,dp=4", topo.num_ranks)
    placement = place(layout, topo)
    links = {axis: {collectives.group_link(topo, [int(r) for r in g]).name for g in axis_groups(placement, axis)}
             for axis in ("tp", "fsdp", "dp")}
    assert links == {"tp": {"on_chip"}, "fsdp": {"ring"}, "dp": {"efa"}}


def test_ring_formula_for_large_messages():
    group = [0, 4, 8, 12]            # one ring of the torus row, 1 hop per step
    S = 2 ** 30
    p = collectives.price(INSTANCE, "all-reduce", S, group)
    torus = INSTANCE.links["torus"]
    B = torus.bytes_per_s / 2        # per_direction = false: one direction is half
    B *= 2                           # the ring runs both directions, half the buffer each way
    assert p.algorithm == "ring" and p.link == "torus"
    assert p.seconds == pytest.approx(2 * 3 * (torus.latency_s + S / (4 * B)))
    ag = collectives.price(INSTANCE, "all-gather", S, group)
    assert ag.seconds == pytest.approx(3 * (torus.latency_s + S / (4 * B)))


def test_ring_paths_use_every_link_of_a_whole_torus():
    """A row of the torus is one cycle (both directions: ×2); a group over all 16 chips runs two
    edge-disjoint Hamiltonian cycles (×4); ranks of one chip share HBM (×1)."""
    assert collectives.ring_paths(INSTANCE, [0, 4, 8, 12]) == 2
    assert collectives.ring_paths(INSTANCE, list(range(0, 64, 4))) == 4
    assert collectives.ring_paths(INSTANCE, list(range(64))) == 4
    assert collectives.ring_paths(INSTANCE, [0, 1, 2, 3]) == 1
    assert collectives.ring_paths(ULTRA, [0, 64, 128, 192]) == 2
    big = collectives.price(INSTANCE, "all-reduce", 2 ** 30, list(range(0, 64, 4)))
    torus = INSTANCE.links["torus"]
    assert big.algorithm == "ring"
    assert big.seconds == pytest.approx(2 * 15 * (torus.latency_s + 2 ** 30 / (16 * 4 * torus.bytes_per_s / 2)))


def test_small_messages_take_a_latency_optimal_algorithm():
    group = list(range(0, 64, 4))    # 16 chips
    small = collectives.price(INSTANCE, "all-reduce", 4096, group)
    assert small.algorithm in ("mesh", "rdh")
    assert small.seconds < collectives._ring("all-reduce", 16, 4096, INSTANCE.links["torus"].latency_s,
                                      collectives.bandwidth(INSTANCE, INSTANCE.links["torus"], 1))


def test_ranks_of_a_chip_share_its_links():
    layout = parse_layout("tp=1,dp=64", 64)
    groups = [[int(r) for r in g] for g in axis_groups(place(layout, INSTANCE), "dp")]
    alone = collectives.price(INSTANCE, "all-reduce", 2 ** 28, groups[0])
    shared = collectives.price(INSTANCE, "all-reduce", 2 ** 28, groups[0], groups=groups)
    assert collectives.sharers(INSTANCE, groups, groups[0]) == 1   # dp=64 is one group: no one else
    layout = parse_layout("tp=4,dp=16", 64)                  # tp takes the cores: 4 dp groups per chip
    groups = [[int(r) for r in g] for g in axis_groups(place(layout, INSTANCE), "dp")]
    assert collectives.sharers(INSTANCE, groups, groups[0]) == 4
    one = collectives.price(INSTANCE, "all-reduce", 2 ** 30, groups[0])
    four = collectives.price(INSTANCE, "all-reduce", 2 ** 30, groups[0], groups=groups)
    assert four.seconds > 3.5 * one.seconds and alone.seconds == shared.seconds


def test_groups_across_nodes_go_hierarchical():
    topo = with_nodes(INSTANCE, 2)
    group = list(range(0, 128, 4))   # core 0 of every chip of both nodes
    p = collectives.price(topo, "all-reduce", 2 ** 30, group)
    assert p.link == "efa" and p.algorithm == "hierarchical"
    flat = collectives._ring("all-reduce", 32, 2 ** 30, topo.links["efa"].latency_s,
                      collectives.bandwidth(topo, topo.links["efa"], 1))
    assert p.seconds < flat / 4


def test_permute_and_bad_kind():
    p = collectives.price(ULTRA, "collective-permute", 1e6, [0, 64, 128, 192])
    ring = ULTRA.links["ring"]
    assert p.link == "ring" and p.seconds == pytest.approx(ring.latency_s + 1e6 / (ring.bytes_per_s / 2))
    with pytest.raises(ValueError, match="one of"):
        collectives.price(ULTRA, "broadcast", 1, [0, 1])
    assert math.isfinite(collectives.price(ULTRA, "all-to-all", 1e6, [0, 1, 2, 3]).seconds)
