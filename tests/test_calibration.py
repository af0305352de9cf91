"""Calibration against published Trainium runs (docs/PERFMODEL.md): one compute-efficiency constant
per chip generation derived from ONE published run, the other run predicted within 15 %."""

import pytest

from rainier_jax.perf import calibration
from rainier_jax.perf import published


def test_published_rows_are_in_the_project_with_their_provenance():
    text = published.CSV.read_text()
    assert "aws-neuron/aws-neuron-sdk" in text and "Copied verbatim" in text
    rows = {r.model: r for r in published.rows()}
    assert set(rows) == {"llama-3.1-8b", "llama2-7b"}
    r = rows["llama2-7b"]
    assert (r.nodes, r.tp, r.pp, r.dp, r.zero1, r.global_batch, r.seq_len, r.seq_per_s) == \
        (16, 8, 1, 64, True, 1024, 4096, 81.0)
    for row in rows.values():   # every layout covers the nodes' ranks (32 per trn1.32xlarge)
        assert row.tp * row.pp * row.dp == row.nodes * 32


def test_constants_are_the_derived_values():
    """The constants in perf/calibration.py are what their derivations give today, rounded."""
    assert calibration.LINKS == round(103.89 / 128, 2) == 0.81
    assert calibration.COMPUTE == round(published.derive_compute(), 2)
    assert calibration.EFFICIENCY["trainium2"] == calibration.EFFICIENCY["trainium1"]


@pytest.mark.parametrize("model", ["llama2-7b", "llama-3.1-8b"])
def test_each_published_run_is_predicted_within_15_percent(model):
    """llama2-7b is the calibration row (its error is only the constant's rounding); llama-3.1-8b
    (tp=32 over 32 nodes, seq 8192, GQA) was not used to derive anything."""
    row = published.row(model)
    e = published.predict(row)
    assert e.memory.fits
    assert abs(e.seq_per_s / row.seq_per_s - 1) < 0.15, (e.seq_per_s, row.seq_per_s)


def test_published_mfu_is_consistent_with_the_model_flops():
    """AWS's 30.8 % MFU for llama2-7b and the published throughput, under our FLOP count
    (6·params·tokens + full-square attention), agree within the attention convention."""
    row = published.row("llama2-7b")
    e = published.predict(row)
    ours = e.model_flops * row.seq_per_s / row.global_batch / (e.topo.num_ranks * e.topo.peak_flops_per_rank["bf16"])
    assert ours == pytest.approx(row.published_mfu_pct / 100, rel=0.06)
