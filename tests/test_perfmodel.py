"""The analytic performance model against the compiled program."""

import dataclasses

import jax
import numpy as np
import pytest

from programs import MINI8, RUN, TINY, program_for
from rainier_jax.perf import state_bytes
from rainier_jax.parallel.layout import ParallelLayout, parse_layout
from rainier_jax.spec import dtypes
from rainier_jax.spec.precision import PRESETS


@pytest.mark.parametrize("layout,precision,zero1", [
    (layout, precision, False) for layout in ["dp=8", "fsdp=8", "dp=2,fsdp=2,tp=2", "tp=8", "dp=2,tp=2,pp=2"]
    for precision in ["fp32", "bf16"]] + [
    ("dp=8", "fp32", True), ("dp=4,tp=2", "bf16-mixed", True), ("dp=2,fsdp=2,tp=2", "fp32", True)])
def test_state_bytes_match_the_compiled_steps_arguments(layout, precision, zero1):
    """Weights + optimizer state per rank, counted from the sharding rules, equal the train step's
    argument bytes (XLA's memory_analysis) less the batch and the state's scalar counters.
    tp=8 exceeds the 4 kv heads, so k/v weights stay whole on every rank: the count must know."""
    run = dataclasses.replace(RUN, precision=precision, microbatches=2 if "pp" in layout else 1, zero1=zero1)
    program = program_for(layout, run=run)
    parsed = parse_layout(layout, MINI8.num_ranks)
    state = state_bytes.state_bytes_per_rank(TINY, parsed, PRESETS[precision], zero1=zero1)
    scalars = sum(a.dtype.itemsize for a in jax.tree.leaves(program.abstract_state) if a.ndim == 0)
    batch = run.batch // parsed.data_size * (run.seq + 1) * np.dtype(np.int32).itemsize
    measured = program.step.memory_analysis().argument_size_in_bytes
    assert measured == state["weights"] + state["optimizer"] + scalars + batch


def test_params_per_rank_on_one_device_is_the_model():
    assert state_bytes.params_per_rank(TINY, ParallelLayout()) == TINY.num_params()


def test_zero1_splits_only_the_optimizer():
    layout = parse_layout("dp=4,tp=2", 8)
    plain = state_bytes.state_bytes_per_rank(TINY, layout, PRESETS["bf16-mixed"])
    zero1 = state_bytes.state_bytes_per_rank(TINY, layout, PRESETS["bf16-mixed"], zero1=True)
    assert zero1["weights"] == plain["weights"] and zero1["grads"] == plain["grads"]
    assert zero1["optimizer"] * 4 == plain["optimizer"]


def test_the_one_table_of_dtype_sizes_agrees_with_jax():
    """spec/dtypes.py sizes every dtype the model counts, by policy name and by HLO element type
    alike, as JAX sizes it."""
    for name, hlo_type in dtypes.POLICY_HLO.items():
        assert dtypes.itemsize(name) == dtypes.itemsize(hlo_type) == jax.numpy.dtype(name).itemsize
    for policy in PRESETS.values():
        assert policy.param_bytes == np.dtype(jax.numpy.dtype(policy.param_dtype)).itemsize
