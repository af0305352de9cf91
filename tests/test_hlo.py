"""The HLO reader: replica groups in every spelling, loop trip counts, dot FLOPs, collectives and
the disguised reduce-scatter — on hand-written HLO and on programs JAX really compiled."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from programs import RUN, TINY, program_for
from rainier_jax.perf import flops
from rainier_jax.perf import hlo


@pytest.mark.parametrize("attrs,groups", [
    ("replica_groups={{0,1},{2,3}}, to_apply=%add", [[0, 1], [2, 3]]),
    ("replica_groups={{0,2,4,6},{1,3,5,7}}, dimensions={0}", [[0, 2, 4, 6], [1, 3, 5, 7]]),
    ("replica_groups={}, to_apply=%add", [[0, 1, 2, 3]]),
    ("replica_groups=[2,4]<=[8], to_apply=%add", [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add", [[0, 4], [1, 5], [2, 6], [3, 7]]),
    # The mesh spelling (jax 0.10 with Shardy): groups run over the named axes of a device grid.
    ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}",
     [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_1'}, to_apply=%add", [[0, 1], [2, 3], [4, 5], [6, 7]]),
    ("replica_groups=mesh['a'=2,'b'=2,'c'=2] {'a','c'}, to_apply=%add", [[0, 1, 4, 5], [2, 3, 6, 7]]),
])
def test_replica_group_spellings(attrs, groups):
    assert hlo.replica_groups(attrs, num_devices=4) == groups


LOOP = """
HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(6)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%fused (x: f32[4,8], w: f32[8,8]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0)
  %w = f32[8,8]{1,0} parameter(1)
  ROOT %d = f32[4,8]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %w = f32[8,8]{1,0} constant({...})
  %y = f32[4,8]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused
  %r = f32[4,8]{1,0} all-reduce(%y), channel_id=1, replica_groups={{0,1},{2,3}}, to_apply=%add
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%j, %r)
}

ENTRY %main (x: f32[4,8], g: f32[16], h: bf16[8]) -> (f32[4,8], f32[4], f32[16], bf16[8]) {
  %x = f32[4,8]{1,0} parameter(0)
  %g = f32[16]{0} parameter(1)
  %h = bf16[8]{0} parameter(2)
  %zero = s32[] constant(0)
  %t = (s32[], f32[4,8]{1,0}) tuple(%zero, %x)
  %loop = (s32[], f32[4,8]{1,0}) while(%t), condition=%cond, body=%body
  %out = f32[4,8]{1,0} get-tuple-element(%loop), index=1
  %ar = f32[16]{0} all-reduce(%g), channel_id=2, replica_groups=[2,2]<=[4], to_apply=%add
  %pid = u32[] partition-id()
  %four = u32[] constant(4)
  %off = u32[] multiply(%pid, %four)
  %rs = f32[4]{0} dynamic-slice(%ar, %off), dynamic_slice_sizes={4}
  %pair = (f32[16]{0}, bf16[8]{0}) all-reduce(%g, %h), channel_id=3, replica_groups={{0,1,2,3}}, to_apply=%add
  %p0 = f32[16]{0} get-tuple-element(%pair), index=0
  %p1 = bf16[8]{0} get-tuple-element(%pair), index=1
  %perm = f32[4,8]{1,0} collective-permute(%out), channel_id=4, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  ROOT %res = (f32[4,8]{1,0}, f32[4]{0}, f32[16]{0}, bf16[8]{0}) tuple(%perm, %rs, %p0, %p1)
}
"""


def test_trip_counts_scale_dots_and_collectives():
    module = hlo.parse_module(LOOP)
    assert module.entry == "main"
    runs = hlo.multiplicities(module)
    assert runs["body"] == 6 and runs["fused"] == 6 and runs["main"] == 1
    assert hlo.dot_flops(module) == 6 * 2 * 4 * 8 * 8
    kinds = {c.name: c for c in hlo.collectives(module)}
    assert kinds["r"].runs == 6 and kinds["r"].kind == "all-reduce" and kinds["r"].operand_bytes == 4 * 8 * 4


def test_collective_kinds_bytes_and_groups():
    found = {c.name: c for c in hlo.collectives(hlo.parse_module(LOOP))}
    # An all-reduce read back only through a dynamic-slice is a reduce-scatter.
    rs = found["ar"]
    assert rs.kind == "reduce-scatter" and rs.disguised
    assert rs.groups == ((0, 1), (2, 3)) and rs.operand_bytes == 64 and rs.result_bytes == 32
    # A tuple-shaped all-reduce moves the bytes of all its operands.
    pair = found["pair"]
    assert pair.kind == "all-reduce" and not pair.disguised and pair.operand_bytes == 16 * 4 + 8 * 2
    assert pair.groups == ((0, 1, 2, 3),)
    perm = found["perm"]
    assert perm.kind == "collective-permute" and perm.pairs == ((0, 1), (1, 2), (2, 3), (3, 0))


def test_known_trip_count_annotation_wins():
    text = LOOP.replace("condition=%cond, body=%body",
                        'condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"9"}}')
    assert hlo.multiplicities(hlo.parse_module(text))["body"] == 9


def test_reduce_scatter_recognised_after_spmd_partitioning(tmp_path):
    """FSDP's weight gradient: GSPMD emits an all-reduce over the fsdp group and keeps a slice;
    the dump right after SPMD partitioning shows it, and it is read as a reduce-scatter."""
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("dp", "fsdp"))
    w_sh = NamedSharding(mesh, P("fsdp", None))

    # A learning rate new to every run: a hit in the persistent compile cache (conftest) would
    # skip compilation, and with it the dump.
    lr = float(np.random.default_rng().uniform(0.05, 0.15))

    def sgd(w, x):
        g = jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w)
        return w - lr * g

    w = jax.ShapeDtypeStruct((64, 64), jnp.float32, sharding=w_sh)
    x = jax.ShapeDtypeStruct((32, 64), jnp.float32, sharding=NamedSharding(mesh, P(("dp", "fsdp"), None)))
    compiled = jax.jit(sgd, out_shardings=w_sh).lower(w, x).compile(
        compiler_options={"xla_dump_to": str(tmp_path), "xla_dump_hlo_pass_re": "spmd-partitioning"})
    (after,) = tmp_path.glob("*after_spmd-partitioning*")
    found = hlo.collectives(hlo.parse_module(after.read_text()), num_devices=8)
    scatters = [c for c in found if c.kind == "reduce-scatter"]
    assert len(scatters) == 1
    rs = scatters[0]
    assert sorted(map(sorted, rs.groups)) == [[0, 1, 2, 3], [4, 5, 6, 7]]   # the fsdp groups
    assert rs.operand_bytes == 64 * 64 * 4 and rs.result_bytes == 64 * 64 * 4 // 4
    gathers = [c for c in found if c.kind == "all-gather"]
    assert len(gathers) == 1 and gathers[0].result_bytes == 64 * 64 * 4
    # The final program (what `compiled.as_text()` shows) parses too.
    assert {c.kind for c in hlo.collectives(hlo.parse_module(compiled.as_text()), 8)} >= {"all-gather"}


@pytest.mark.parametrize("layout,precision,remat", [
    ("dp=8", "fp32", "full"), ("fsdp=8", "fp32", "full"), ("dp=2,fsdp=2,tp=2", "fp32", "full"),
    ("dp=2,tp=4", "fp32", "full"), ("dp=2,fsdp=2,tp=2", "bf16-mixed", "full"), ("dp=2,tp=4", "bf16-mixed", "full"),
    ("dp=2,fsdp=2,tp=2", "fp32", "selective"), ("dp=2,fsdp=2,tp=2", "fp32", "none"),
    ("dp=2,tp=4", "bf16-mixed", "selective"),
])
def test_dot_flops_of_the_compiled_step_match_the_analytic_count(layout, precision, remat):
    """Every matmul of the train step, counted from the compiled program with loop trip counts,
    equals the analytic hardware FLOPs (recompute included) split over the 8 ranks — exactly."""
    run = dataclasses.replace(RUN, precision=precision, remat=remat)
    program = program_for(layout, run=run)
    per_device = hlo.dot_flops(hlo.parse_module(program.step.as_text()))
    expected = flops.hardware_flops(TINY, batch=run.batch, seq=run.seq, remat=remat) / 8
    assert per_device == expected
    # Why the trip counts matter: XLA's own count sees the scanned layer body once.
    assert program.step.cost_analysis()["flops"] < 0.5 * expected


def test_remat_does_not_change_the_numbers():
    """Rematerialisation recomputes the same operations: losses and gradients are identical."""
    import numpy as np
    from rainier_jax.train import data as data_lib
    corpus = data_lib.load_corpus(None, TINY.vocab_size, RUN.seq)
    batch = data_lib.batch(corpus, seed=0, step=0, batch_size=RUN.batch, seq_len=RUN.seq)
    results = {}
    for remat in ("full", "selective", "none"):
        program = program_for("dp=2,fsdp=2,tp=2", run=dataclasses.replace(RUN, remat=remat))
        state = program.init()
        loss, grads = program.grads(state, jax.device_put(batch, program.batch_sharding))
        results[remat] = (float(loss), jax.tree.map(np.asarray, jax.device_get(grads)))
    ref_loss, ref_grads = results["full"]
    for remat, (loss, grads) in results.items():
        assert loss == ref_loss, remat
        for a, b in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.max(np.abs(a)), err_msg=remat)


def test_model_flops_convention():
    """6·(matmul parameters)·tokens plus attention, nothing recomputed."""
    cfg, B, T = TINY, 4, 32
    matmul_params = (TINY.n_layers * (cfg.d_model * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
                                      + cfg.n_heads * cfg.head_dim * cfg.d_model + 3 * cfg.d_model * cfg.mlp_dim)
                     + cfg.d_model * cfg.vocab_size)
    attention = 12 * cfg.n_layers * T * cfg.n_heads * cfg.head_dim
    assert flops.model_flops(cfg, batch=B, seq=T) == (6 * matmul_params + attention) * B * T
    assert flops.hardware_flops(cfg, batch=B, seq=T, remat="none") == flops.model_flops(cfg, batch=B, seq=T)


def test_compiled_collectives_map_onto_the_links_their_axis_crosses():
    """The compiled path's chain: the step's HLO → each collective's device groups → the link class
    on the topology. Device d is emulated rank d (Experiment.mesh), so on trn2-mini-8 with
    dp=2,fsdp=2,tp=2 (`rainier mesh show`: tp on the chip, fsdp over the torus, dp over the
    instance ring) every collective must land on exactly the class of the axes it spans."""
    from programs import MINI8
    from rainier_jax.perf import collectives as comm

    program = program_for("dp=2,fsdp=2,tp=2")
    found = hlo.collectives(hlo.parse_module(program.step.as_text()), num_devices=8)
    # Placement puts tp on ranks (0,1), fsdp on (0,2), dp on (0,4) — and the groups of every
    # collective in the program are the groups of one axis or of several.
    axis_of = {(0, 1): "tp", (0, 2): "fsdp", (0, 4): "dp", (0, 2, 4, 6): "dp×fsdp"}
    expected = {"tp": "on_chip", "fsdp": "torus", "dp": "ring", "dp×fsdp": "ring"}
    seen = set()
    for c in found:
        axis = axis_of[c.groups[0]]   # a collective over any other grouping fails here
        seen.add(axis)
        assert {comm.group_link(MINI8, list(g)).name for g in c.groups} == {expected[axis]}, (c.name, axis)
    assert seen == set(axis_of.values())
