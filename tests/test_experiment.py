"""The resolved experiment (rainier_jax/parallel/experiment.py) and how a checkpoint records it
(rainier_jax/train/checkpoint/record.py): validated once, placed once, its mesh the placement,
kept in the run record as structured fields — and records of the previous format still read."""

import dataclasses

import numpy as np
import pytest

from rainier_jax.config.errors import ConfigError, spell
from rainier_jax.hardware.topology import load_topology
from rainier_jax.parallel.experiment import resolve, single_device
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.parallel.placement import place
from rainier_jax.parallel.schedules import build_schedule
from rainier_jax.spec.model import load_model
from rainier_jax.spec.run import RunConfig
from rainier_jax.train.checkpoint import record

MINI8 = load_topology("trn2-mini-8")
TINY = load_model("tiny")
RUN = RunConfig(steps=3, batch=16, seq=64, eval_every=0)


def test_resolve_places_the_layout_once():
    e = resolve(MINI8, TINY, "dp=2,fsdp=2,tp=2", RUN)
    assert e.layout == ParallelLayout(dp=2, fsdp=2, tp=2) and e.topology is MINI8 and e.run is RUN
    assert e.placement.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(e.placement, place(e.layout, MINI8))
    assert not e.pipelined and e.schedule is None


def test_the_mesh_puts_each_rank_where_it_was_placed():
    e = resolve(MINI8, TINY, "tp=2,dp=4", RUN)
    assert e.mesh.axis_names == ("pp", "dp", "fsdp", "tp")
    np.testing.assert_array_equal(np.vectorize(lambda d: d.id)(e.mesh.devices), e.placement)
    assert e.mesh is e.mesh   # built once


def test_no_text_means_dp_over_every_rank():
    assert resolve(MINI8, TINY, None, RUN).layout == ParallelLayout(dp=8)


def test_pipelined_experiment_carries_its_schedule():
    e = resolve(MINI8, TINY, "pp=2,dp=2,tp=2", dataclasses.replace(RUN, microbatches=4, schedule="gpipe"))
    assert e.pipelined
    expected = build_schedule("gpipe", 2, 4, 1)
    assert (e.schedule.fwd == expected.fwd).all() and (e.schedule.bwd == expected.bwd).all()


@pytest.mark.parametrize("mesh,text,run,words", [
    ("trn2-instance", "tp=16,dp=4", RUN, "tp=16 does not divide the model's n_heads"),
    ("trn2-mini-8", "dp=8", dataclasses.replace(RUN, batch=12), "not divisible"),
    ("trn2-mini-8", "pp=2,dp=4", RUN, "microbatches"),     # a pipeline needs microbatches ≥ pp
    ("trn2-mini-8", "pp=2,dp=4", dataclasses.replace(RUN, precision="fp8", microbatches=2), "fp8"),
])
def test_every_check_runs_in_resolve(mesh, text, run, words):
    with pytest.raises(ConfigError, match=words):
        resolve(load_topology(mesh), TINY, text, run)


def test_errors_name_the_setting_and_each_front_end_spells_it():
    with pytest.raises(ConfigError) as caught:
        resolve(MINI8, TINY, "dp=3", RUN)
    assert str(caught.value).startswith("parallel dp=3: ")                       # Python callers
    assert spell(caught.value.raw, {"parallel": "--parallel"}).startswith("--parallel dp=3: ")   # the CLI
    with pytest.raises(ConfigError) as caught:
        resolve(MINI8, TINY, "dp=3", RUN, setting="reference")
    assert str(caught.value).startswith("reference dp=3: ")


def test_with_run_validates_again():
    e = resolve(MINI8, TINY, "dp=8", RUN)
    assert e.with_run(steps=5).run.steps == 5
    with pytest.raises(ConfigError, match="not divisible"):
        e.with_run(microbatches=3)


def test_single_device_has_no_topology():
    e = single_device(TINY, RUN)
    assert e.topology is None and e.placement is None and e.layout == ParallelLayout()
    assert e.mesh.devices.size == 1 and e.warnings() == []


# --- the run record --------------------------------------------------------------------------

def _record(experiment, step=2):
    rec = record.run_record(experiment, mesh="trn2-mini-8", data_arg=None, corpus_source="corpus",
                            corpus_sha256="0" * 64, checkpoint_every=1, keep=2)
    return record.step_record(rec, step)


def test_the_record_keeps_the_experiment_structurally():
    e = resolve(MINI8, TINY, "pp=2,dp=2,tp=2", dataclasses.replace(RUN, microbatches=2))
    rec = _record(e)
    assert rec["format_version"] == record.FORMAT_VERSION == 2
    assert rec["experiment"]["layout"] == {"pp": 2, "dp": 2, "fsdp": 1, "tp": 2}
    parsed = record.validate_record(rec, 2)
    assert parsed.experiment.layout == e.layout and parsed.experiment.model == TINY
    assert parsed.experiment.run == e.run and parsed.experiment.lnc == MINI8.lnc
    assert parsed.experiment.layout_text == "pp=2,dp=2,fsdp=1,tp=2"


def _as_version_1(rec: dict) -> dict:
    """The same record as rainier-jax wrote it before format version 2 (its exact shape)."""
    exp = rec["experiment"]
    old = {k: v for k, v in rec.items() if k != "experiment"}
    return {**old, "format": "rainier-jax checkpoint v1", "format_version": 1, "mesh": exp["mesh"],
            "lnc": exp["lnc"], "parallel": ",".join(f"{a}={n}" for a, n in exp["layout"].items()),
            "model": exp["model"], "run": exp["run"]}


def test_a_version_1_record_reads_as_the_same_experiment():
    rec = _record(resolve(MINI8, TINY, "dp=2,fsdp=2,tp=2", RUN))
    old = _as_version_1(rec)
    assert "experiment" not in old and old["parallel"] == "pp=1,dp=2,fsdp=2,tp=2"
    new, parsed = record.validate_record(rec, 2), record.validate_record(old, 2)
    assert parsed.format_version == 1 and new.format_version == 2
    assert parsed.experiment == new.experiment and parsed.data == new.data and parsed.step == 2
    # Records from before `format_version` existed say their version only in `format`.
    bare = {k: v for k, v in old.items() if k != "format_version"}
    assert record.validate_record(bare, 2).experiment == new.experiment


@pytest.mark.parametrize("damage", [
    lambda r: {**r, "parallel": "pp=1,dp=two"},
    lambda r: {**r, "parallel": 8},
    lambda r: {k: v for k, v in r.items() if k != "parallel"},
])
def test_a_damaged_version_1_layout_is_a_malformed_record(damage):
    old = damage(_as_version_1(_record(resolve(MINI8, TINY, "dp=8", RUN))))
    with pytest.raises(ConfigError):
        record.validate_record(old, 2)
