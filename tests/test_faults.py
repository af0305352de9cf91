"""Faults during training, run as a user runs them: a disk that fills up, a metrics device that
refuses writes, a run that diverges to NaN. Each ends in one line and a non-zero exit, and every
checkpoint completed before the fault still verifies and resumes bitwise.

The full disk is a real 40 MiB tmpfs (room for one checkpoint of the tiny model, not two) when
this machine lets the test mount one; otherwise the second checkpoint's save fails with ENOSPC
where its manifest is written, through the store's `before_seal` hook that tests/fault_entry.py
installs in the subprocess — the same background write, the same handling.
The three runs go concurrently (module fixture); the checkpoint directory is always relative.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cli_runner import cli_env, command
from rainier_jax.train.checkpoint import manifest

SMALL = ("--batch", "8", "--seq", "32", "--eval-every", "0")
# Fail the second checkpoint's save (step 4) with ENOSPC (fallback when tmpfs is refused).
FULL_DISK = ("--seal-fail", "4")


def _run(args, cwd: Path, faults=(), timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, faults), cwd=cwd, env=cli_env(args), capture_output=True, text=True,
                          timeout=timeout)


def _problems(stderr: str) -> list[str]:
    """stderr without the progress lines (`step N  loss …`, printed there when not a terminal)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("step ")]


def _records(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"{path}: bare {name} is not JSON")
    return [json.loads(ln, parse_constant=refuse) for ln in path.read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    disk = base / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)],
                                 capture_output=True).returncode == 0
    except OSError:   # no mount(8) here: the hook stands in
        mounted = False
    nan, devfull = base / "nan", base / "devfull"
    nan.mkdir(), devfull.mkdir()
    train = ("train", "--checkpoint-dir", "ck", "--metrics", "m.jsonl")
    kept = base / "kept"
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            full = pool.submit(_run, (*train, "--steps", "8", "--checkpoint-every", "2", *SMALL), disk,
                               () if mounted else FULL_DISK)
            diverged = pool.submit(_run, (*train, "--steps", "6", "--checkpoint-every", "1", "--lr", "1e30", *SMALL),
                                   nan)
            refused = pool.submit(_run, ("train", "--steps", "3", "--metrics", "/dev/full", *SMALL), devfull)
            results = {"full": full.result(), "nan": diverged.result(), "devfull": refused.result()}
        shutil.copytree(disk, kept)   # what the full-disk run left, kept past the mount
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
    yield {"results": results, "full_dir": kept, "nan_dir": nan, "mounted": mounted}


def test_full_disk_is_one_line_and_loses_nothing(faults):
    r, d = faults["results"]["full"], faults["full_dir"]
    detail = f"tmpfs={faults['mounted']} exit {r.returncode}\n{r.stderr[-3000:]}"
    assert r.returncode == 1, detail
    assert "Traceback" not in r.stderr, detail
    problems = _problems(r.stderr)
    assert len(problems) == 1, detail
    assert problems[0].startswith("rainier: stopped: --checkpoint-dir: the disk is full: the checkpoint of step 4"), detail
    assert f"the newest intact checkpoint is {Path(faults['full_dir']).parent / 'disk' / 'ck' / '2'}" in problems[0], detail
    # Step 2's checkpoint is intact; step 4's half-written temporary was removed to free the space.
    assert sorted(p.name for p in (d / "ck").iterdir()) == ["2"], detail
    assert manifest.verify(d / "ck" / "2") is None
    before = _records(d / "m.jsonl")
    assert [rec["step"] for rec in before] == [1, 2, 3, 4, 5, 6], detail   # the loop ran on until step 6's save

    # Resume (relative --checkpoint-dir again, from another directory) where there is room: the
    # steps after the checkpoint come out bitwise as the first run computed them.
    again = _run(("train", "--checkpoint-dir", "ck", "--resume", "--metrics", "m2.jsonl"), d)
    assert again.returncode == 0, again.stderr[-3000:]
    after = _records(d / "m2.jsonl")
    assert [rec["step"] for rec in after] == [3, 4, 5, 6, 7, 8]
    for a, b in zip(before[2:], after):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), (a, b)
    assert "metrics: 6 records appended to m2.jsonl" in again.stdout
    assert sorted(p.name for p in (d / "ck").iterdir()) == ["4", "6", "8"]   # --keep 3, as saved


def test_diverged_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(faults):
    r, d = faults["results"]["nan"], faults["nan_dir"]
    detail = f"exit {r.returncode}\n{r.stderr[-3000:]}"
    assert r.returncode == 1 and "Traceback" not in r.stderr, detail
    records = _records(d / "m.jsonl")           # strict JSON: a bare NaN would raise here
    bad = next(rec for rec in records if rec["loss"] is None or rec["grad_norm"] is None)
    assert records[-1] is bad, "the run must stop at the first non-finite step"
    problems = _problems(r.stderr)
    assert len(problems) == 1 and problems[0].startswith(f"rainier: stopped: step {bad['step']}: "), detail
    assert "diverged" in problems[0] and f"ck/{bad['step'] - 1} (step {bad['step'] - 1})" in problems[0], detail
    # Every step before the bad one was saved (--checkpoint-every 1); the bad state never was.
    steps = sorted(int(p.name) for p in (d / "ck").iterdir())
    assert steps[-1] == bad["step"] - 1, steps
    assert manifest.verify(d / "ck" / str(steps[-1])) is None


def test_metrics_device_refusing_writes_stops_at_the_first_record(faults):
    r = faults["results"]["devfull"]
    detail = f"exit {r.returncode}\n{r.stderr[-3000:]}"
    assert r.returncode == 1 and "Traceback" not in r.stderr, detail
    assert _problems(r.stderr) == ["rainier: stopped: --metrics /dev/full: cannot write step 1 "
                                   "(No space left on device)"], detail
    assert "step      2" not in r.stderr, detail   # stopped at the first failed write, not at the end


def test_loss_scaling_overflow_is_not_divergence():
    from rainier_jax.spec.precision import PRESETS
    from rainier_jax.train.metrics import StepRecord
    from rainier_jax.train.loop import StopRun, check_finite

    rec = StepRecord(3, float("inf"), float("nan"), 1e-3, 100.0)
    check_finite(rec, PRESETS["fp16-mixed"])       # an overflow: the step was skipped by design
    with pytest.raises(StopRun, match="step 3: loss inf and grad_norm nan"):
        check_finite(rec, PRESETS["bf16-mixed"])
    assert json.loads(json.dumps(rec.as_json(), allow_nan=False))["loss"] is None
