"""`rj.emulate()`, the API for users' own code (rainier_jax/api/emulate.py).

The pytest process runs JAX on 8 CPU devices already (conftest.py), so the cases on trn2-mini-8
(8 ranks) run here; a mesh of another size needs a fresh interpreter, and one child checks all of
that mesh's properties at once.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import rainier_jax as rj
from cli_runner import ROOT
from rainier_jax.config.errors import ConfigError
from rainier_jax.hardware.topology import load_topology
from rainier_jax.parallel.layout import parse_layout
from rainier_jax.parallel.placement import place
from rainier_jax.parallel.placement_view import render_mesh


def child(code: str, timeout: float = 120) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object last."""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_importing_the_package_imports_no_jax():
    out = child("import sys, json\n"
                "import rainier_jax as rj\n"
                "names = [rj.EmulationError.__name__, rj.Emulation.__name__, rj.emulate.__name__]\n"
                "jax = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax'))\n"
                "print(json.dumps({'names': names, 'jax': jax}))")
    assert out == {"names": ["EmulationError", "Emulation", "emulate"], "jax": []}


FRESH_64 = r"""
import json
import numpy as np
import rainier_jax as rj
em = rj.emulate(mesh="trn2-instance", parallel="fsdp=16,tp=4")
import jax
from flax import nnx
import optax

class Block(nnx.Module):
    def __init__(self, rngs):
        init = nnx.initializers.normal(0.02)
        self.up = nnx.Linear(64, 256, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")))
        self.embed = nnx.Param(nnx.with_partitioning(init, ("vocab", "embed"))(rngs.params(), (128, 64)))

with em:
    model = Block(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
moment = jax.tree.leaves(nnx.state(opt, nnx.optimizer.OptState))
again = rj.emulate(mesh="trn2-instance", parallel="fsdp=16,tp=4")   # the same settings: fine
try:
    rj.emulate()   # trn2-mini-8: 8 devices, but JAX runs on 64 now
    error = None
except rj.EmulationError as e:
    error = str(e)
batch = em.put(np.arange(64 * 3, dtype=np.int32).reshape(64, 3), "batch", None)
print(json.dumps({
    "devices": len(jax.devices()), "axis_names": list(em.mesh.axis_names),
    "mesh_ids": [[int(d.id) for d in row] for row in em.mesh.devices.reshape(-1, 4)],
    "axis_types": [str(t) for t in em.mesh.axis_types],
    "rules": [list(r) for r in em.rules], "activation_rules": [list(r) for r in em.activation_rules],
    "kernel": str(model.up.kernel[...].sharding.spec), "embed": str(model.embed[...].sharding.spec),
    "moment_specs": sorted({str(m.sharding.spec) for m in moment if getattr(m, "ndim", 0) == 2}),
    "again": [list(again.mesh.axis_names), again.mesh.devices.tolist() == em.mesh.devices.tolist()],
    "error": error, "describe": em.describe(),
    "batch": [str(batch.sharding.spec), batch.shape[0],
              next(s.data.tolist() for s in batch.addressable_shards if s.device.id == 5)],
}))
"""


@pytest.fixture(scope="module")
def fresh_64():
    return child(FRESH_64)


def test_emulate_starts_jax_with_one_device_per_rank(fresh_64):
    assert fresh_64["devices"] == 64
    assert fresh_64["axis_names"] == ["pp", "dp", "fsdp", "tp"]
    assert set(fresh_64["axis_types"]) == {"AxisType.Auto"}


def test_devices_are_placed_as_rainier_train_places_them(fresh_64):
    topo = load_topology("trn2-instance")
    placement = place(parse_layout("fsdp=16,tp=4", topo.num_ranks), topo)
    assert fresh_64["mesh_ids"] == placement.reshape(-1, 4).tolist()
    assert fresh_64["describe"] == render_mesh(topo, parse_layout("fsdp=16,tp=4", 64), placement)


def test_rules_are_the_layouts_parameter_and_activation_rules(fresh_64):
    rules = dict(fresh_64["rules"])
    assert rules == {"layers": "pp", "vocab": "tp", "embed": "fsdp", "heads": "tp", "kv_heads": "tp",
                     "head_dim": None, "mlp": "tp", "norm": None}
    assert dict((k, tuple(v) if isinstance(v, list) else v) for k, v in fresh_64["activation_rules"])["batch"] == \
        ("dp", "fsdp")


def test_nnx_variables_created_inside_are_sharded(fresh_64):
    assert fresh_64["kernel"] == str(P("fsdp", "tp")) and fresh_64["embed"] == str(P("tp", "fsdp"))
    # The optimizer's moments take their parameters' shardings.
    assert {str(P("fsdp", "tp")), str(P("tp", "fsdp"))} <= set(fresh_64["moment_specs"])


def test_put_splits_the_batch_over_the_data_axes(fresh_64):
    spec, rows, shard = fresh_64["batch"]
    assert spec == str(P(("dp", "fsdp"), None)) and rows == 64
    # device 5 holds fsdp shard 1 (it is at tp 1 of fsdp 1): 64 rows / 16 = 4 rows each.
    assert shard == np.arange(64 * 3).reshape(64, 3)[4:8].tolist()


def test_again_with_the_same_settings_and_refused_for_another_device_count(fresh_64):
    assert fresh_64["again"] == [["pp", "dp", "fsdp", "tp"], True]
    assert fresh_64["error"].startswith("mesh trn2-mini-8 needs 8 CPU devices but JAX has already started with 64")
    assert "call rj.emulate() before anything else uses JAX" in fresh_64["error"]


# ---- in this process (8 devices) ---------------------------------------------------------------

@pytest.fixture
def no_command_line(monkeypatch):
    for var in ("RAINIER_MESH", "RAINIER_LNC", "RAINIER_PARALLEL"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_defaults_are_trn2_mini_8_with_dp_over_every_rank(no_command_line):
    em = rj.emulate()
    assert em.topology.name == "trn2-mini-8" and (em.layout.dp, em.layout.size) == (8, 8)
    assert em.mesh.devices.shape == (1, 8, 1, 1)
    assert isinstance(em, rj.Emulation)


def test_with_is_reentrant_and_is_left_behind_on_exit(no_command_line):
    import jax
    from flax import nnx
    em = rj.emulate(parallel="dp=2,fsdp=2,tp=2")
    kernel = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
    with em:
        with em:
            inner = nnx.Linear(8, 16, rngs=nnx.Rngs(0), kernel_init=kernel)
        outer = nnx.Linear(8, 16, rngs=nnx.Rngs(0), kernel_init=kernel)
    assert inner.kernel[...].sharding.spec == outer.kernel[...].sharding.spec == P("fsdp", "tp")
    assert inner.kernel[...].sharding.mesh == em.mesh
    assert jax.sharding.get_abstract_mesh().empty   # the mesh context is left


def test_describe_is_what_rainier_mesh_show_prints(no_command_line, capsys):
    from rainier_jax.cli.main import main
    em = rj.emulate(parallel="dp=2,fsdp=2,tp=2")
    assert main(["mesh", "show", "trn2-mini-8", "--parallel", "dp=2,fsdp=2,tp=2"]) == 0
    assert capsys.readouterr().out == em.describe() + "\n"
    assert "fsdp index of each rank (fsdp=2)" in em.describe()


def test_sharding_names_an_unknown_axis(no_command_line):
    em = rj.emulate()
    assert em.sharding("batch", None).spec == P(("dp", "fsdp"), None)
    assert em.put(np.zeros((8, 2)), "batch").sharding.spec == P(("dp", "fsdp"))
    with pytest.raises(ValueError, match="no sharding rule for logical axis 'tokens'"):
        em.sharding("tokens")


def test_check_refuses_kv_heads_tp_does_not_divide(no_command_line):
    from flax import nnx
    em = rj.emulate(parallel="dp=2,tp=4")

    def model(kv_heads):
        # A key projection [d_model, kv_heads, head_dim], built abstractly: nothing allocated.
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "kv_heads", "head_dim"))
        return lambda: nnx.Einsum("btd,dgk->btgk", (16, kv_heads, 8), kernel_init=init, rngs=nnx.Rngs(0))

    em.check(model(4))
    with pytest.raises(rj.EmulationError, match=r"tp=4 does not divide dimension 1 \(2\) of parameter kernel "
                                                 r"\(logical axis 'kv_heads'\)") as e:
        em.check(model(2))
    assert isinstance(e.value, ConfigError) and "‹" not in str(e.value)
    with pytest.raises(rj.EmulationError, match="unknown logical axis name 'tp'"):
        em.check(lambda: nnx.Linear(4, 4, rngs=nnx.Rngs(0), kernel_init=nnx.with_partitioning(
            nnx.initializers.lecun_normal(), ("embed", "tp"))))
    with em:   # a module built for real on the mesh is read the same way
        em.check(model(4)())



@pytest.mark.parametrize("kwargs,message", [
    ({"parallel": "dp=3"}, "parallel dp=3: the axis sizes multiply to 3 but the mesh has 8 ranks"),
    ({"parallel": "dp=2,tq=4"}, "parallel dp=2,tq=4: unknown axis 'tq'"),
    ({"mesh": "nope"}, "mesh nope: unknown mesh name"),
    ({"lnc": 3}, "lnc 3: trn2-mini-8 supports only lnc 2"),
    ({"lnc": "2"}, "lnc '2': must be an integer"),
    ({"mesh": "trn2-mini-16"}, "mesh trn2-mini-16 needs 16 CPU devices but JAX has already started with 8"),
])
def test_bad_settings_are_an_emulation_error_naming_the_argument(no_command_line, kwargs, message):
    with pytest.raises(rj.EmulationError) as info:
        rj.emulate(**kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert "\u2039" not in info.value.raw   # spelled for Python: no setting marks left


def test_rainier_runs_settings_are_taken_and_contradictions_refused(no_command_line):
    no_command_line.setenv("RAINIER_MESH", str(ROOT / "meshes" / "trn2-mini-8.toml"))
    no_command_line.setenv("RAINIER_PARALLEL", "fsdp=4,tp=2")
    em = rj.emulate()
    assert (em.layout.fsdp, em.layout.tp) == (4, 2)
    # The same settings spelled another way are no contradiction.
    assert rj.emulate(mesh="trn2-mini-8", parallel="tp=2,fsdp=4").layout == em.layout
    with pytest.raises(rj.EmulationError, match=r"^parallel dp=8: contradicts rainier run --parallel fsdp=4,tp=2; "
                                                r"leave parallel out of rj.emulate\(\)"):
        rj.emulate(parallel="dp=8")
    with pytest.raises(rj.EmulationError, match=r"^mesh trn2-instance: contradicts rainier run --mesh .*trn2-mini-8"):
        rj.emulate(mesh="trn2-instance")
    with pytest.raises(rj.EmulationError, match=r"^lnc 1: contradicts rainier run --lnc 2"):
        no_command_line.setenv("RAINIER_LNC", "2")
        rj.emulate(lnc=1)
    no_command_line.setenv("RAINIER_PARALLEL", "dp=3")
    with pytest.raises(rj.EmulationError, match=r"^rainier run --parallel dp=3: the axis sizes multiply to 3"):
        rj.emulate()

