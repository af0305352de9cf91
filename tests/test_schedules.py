"""Pipeline schedules as data: valid tables, textbook bubbles, bounded in-flight activations."""

import json
import re

import numpy as np
import pytest

from cli_runner import rainier
from rainier_jax.config.errors import ConfigError, spell
from rainier_jax.parallel.schedules import IDLE, ScheduleKind, build_schedule, check_table, pack, validate

CASES = [(kind, P, M, V) for P in (2, 4) for M in (P, 2 * P, 4 * P)
         for kind, V in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 4))]


@pytest.mark.parametrize("kind,P,M,V", CASES)
def test_tables_are_valid_and_bubbles_match_theory(kind, P, M, V):
    s = build_schedule(kind, P, M, V)
    assert check_table(s) == []
    assert s.bubble() == pytest.approx(s.theoretical_bubble(), abs=1e-12)
    # every op exactly once
    assert (s.fwd[:, :, 0] != IDLE).sum() == (s.bwd[:, :, 0] != IDLE).sum() == P * V * M
    # The executor's packed table: still valid, never longer, same activation bound.
    q = pack(s)
    assert check_table(q) == [] and q.ticks <= s.ticks and q.peak_in_flight() == s.peak_in_flight()


@pytest.mark.parametrize("P,M", [(2, 2), (2, 8), (4, 4), (4, 16)])
def test_1f1b_bounds_activations_gpipe_does_not(P, M):
    assert build_schedule("1f1b", P, M).peak_in_flight() == [P - p for p in range(P)]
    assert build_schedule("gpipe", P, M).peak_in_flight() == [M] * P


def test_check_table_catches_broken_tables():
    s = build_schedule("1f1b", 4, 8)
    fwd = s.fwd.copy()
    t0 = int(np.argmax(fwd[:, 1, 0] != IDLE))   # stage 1's first forward runs before stage 0's
    fwd[[0, t0], 1] = fwd[[t0, 0], 1]
    broken = type(s)(s.kind, s.P, s.M, s.V, fwd, s.bwd)
    assert any("does not follow" in p for p in check_table(broken))
    bwd = s.bwd.copy()
    bwd[bwd[:, 3, 1] == 0, 3] = IDLE                # a backward that never runs
    assert any("missing" in p for p in check_table(type(s)(s.kind, s.P, s.M, s.V, s.fwd, bwd)))


@pytest.mark.parametrize("kind,P,M,V,layers,needle", [
    ("interleaved", 4, 8, 1, None, "--virtual-stages 1"),
    ("1f1b", 4, 8, 2, None, "only the interleaved"),
    ("1f1b", 4, 2, 1, None, "--microbatches 2"),
    ("interleaved", 4, 6, 2, None, "multiple of 4"),
    ("gpipe", 3, 4, 1, 8, "do not split"),
    ("interleaved", 4, 8, 4, 8, "do not split"),
    ("gpipe", 2, 0, 1, None, "--microbatches 0"),
])
def test_validation(kind, P, M, V, layers, needle):
    with pytest.raises(ConfigError) as info:
        validate(ScheduleKind(kind), P, M, V, n_layers=layers)
    assert re.search(needle, as_flags(info.value.raw))


def as_flags(text: str) -> str:
    """A library message (ConfigError.raw, a note) as the CLI spells its settings: `--name`."""
    return spell(text, lambda name: "--" + name.replace("_", "-"))


def test_gpipe_accepts_fewer_microbatches_than_stages():
    s = build_schedule("gpipe", 4, 2)
    assert check_table(s) == [] and s.bubble() == pytest.approx(3 / 5)


def test_schedule_command_prints_and_writes_trace_and_png(tmp_path):
    out = rainier("schedule", "--schedule", "interleaved", "--pp", "4", "--microbatches", "8",
                  "--virtual-stages", "2", "--trace", str(tmp_path / "t.json"), "--png", str(tmp_path / "t.png"))
    assert out.returncode == 0, out.stderr
    assert "bubble fraction: 0.1579 (theory 0.1579" in out.stdout
    assert "stage 0: 11" in out.stdout and out.stdout.count("\nstage ") == 4
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    ops = [e for e in events if e["ph"] == "X"]
    assert len(ops) == 2 * 8 * 4 * 2
    assert {e["cat"] for e in ops} == {"forward", "backward"}
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,needle", [
    (["--schedule", "zigzag", "--pp", "2", "--microbatches", "2"], "--schedule zigzag"),
    (["--schedule", "1f1b", "--pp", "4", "--microbatches", "2"], "--microbatches 2"),
    (["--schedule", "gpipe", "--pp", "2", "--microbatches", "2", "--png", "/no/such/dir/x.png"], "--png"),
])
def test_schedule_command_bad_input(args, needle):
    out = rainier("schedule", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and needle in out.stderr
