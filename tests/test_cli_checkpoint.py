"""Checkpoints as users meet them: `rainier train --checkpoint-dir … [--resume]` in subprocesses —
signals, a crash during an in-flight save, damaged files, refused settings, bad input.

One uninterrupted checkpointed run (`reference`) gives the losses every interrupted-and-resumed
run must reproduce bit for bit (the metrics file keeps each loss as a round-trip float).
"""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runner import ROOT, rainier, start, wait_for
from rainier_jax.train.checkpoint import manifest
from rainier_jax.train.checkpoint import record
from rainier_jax.parity.harness import FREE_LOSS_RTOL

TRAIN = ("train", "--steps", "12", "--batch", "16", "--seq", "64", "--eval-every", "0")
EVERY = 4


def losses(path: Path) -> dict[int, float]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps repeated or out of order: {steps}"
    return {r["step"]: r["loss"] for r in records}


def held(ckpt: Path, step: int, seconds: float) -> bool:
    """Whether the save of `step` is held in flight (fault_entry.py's --seal-delay): `seconds` after
    its temporary directory appeared, it is still there and not committed. Without the hold the
    save commits in a fraction of a second, and a drill would only hope to land inside it."""
    time.sleep(seconds)
    return any(ckpt.glob(f"{step}.orbax-checkpoint-tmp*")) and step not in record.steps_on_disk(ckpt)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A finished run: checkpoints at 4, 8, 12 and the metrics of all 12 steps."""
    d = tmp_path_factory.mktemp("reference")
    r = rainier(*TRAIN, "--checkpoint-dir", str(d / "ckpt"), "--checkpoint-every", str(EVERY),
                "--metrics", str(d / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert record.steps_on_disk(d / "ckpt") == [4, 8, 12]
    (d / "out.txt").write_text(r.stdout)
    return d


def test_checkpointing_does_not_change_the_run(reference, tmp_path):
    r = rainier(*TRAIN, "--metrics", str(tmp_path / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert losses(tmp_path / "m.jsonl") == losses(reference / "m.jsonl")
    assert re.search(r"checkpoints: saved steps 4, 8, 12 in \S+ \(async; the loop waited a median \d+ ms per save\)",
                     (reference / "out.txt").read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_saves_and_resume_is_bitwise(reference, tmp_path, sig):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    # Hold the step-4 save in flight for 5 s (tests/fault_entry.py): the step-8 save must wait for
    # it, so the signal (2 s into the hold) arrives while a save is in flight and the loop is blocked.
    proc = start(*TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", str(EVERY), "--metrics", str(metrics),
                 faults=("--seal-delay", "4:5"))
    wait_for(lambda: any(ckpt.glob("4.orbax-checkpoint-tmp*")), proc)
    assert held(ckpt, 4, 2.0), "the step-4 save is not held in flight: the hook did not act"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stopped = re.search(rf"stopped by {sig.name} after step (\d+); saved (\S+)", out)
    assert stopped, out
    step = int(stopped.group(1))
    assert 4 <= step < 12 and Path(stopped.group(2)) == ckpt / str(step)
    assert 4 in record.steps_on_disk(ckpt) and step in record.steps_on_disk(ckpt)   # the in-flight one finished
    assert manifest.verify(ckpt / str(step)) is None

    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--metrics", str(metrics))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ckpt / str(step)} (step {step}" in r.stdout
    assert losses(metrics) == losses(reference / "m.jsonl")


def test_sigkill_during_an_inflight_save_loses_nothing_complete(reference, tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    proc = start(*TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", str(EVERY), "--metrics", str(metrics),
                 faults=("--seal-delay", "8:60"))
    # The step-8 save is in flight once orbax's temporary directory exists (written, not committed).
    wait_for(lambda: any(ckpt.glob("8.orbax-checkpoint-tmp*")), proc)
    assert held(ckpt, 8, 2.0), "the step-8 save is not held in flight: the hook did not act"
    proc.kill()
    proc.wait(timeout=30)
    assert record.steps_on_disk(ckpt) == [4], "only the committed checkpoint counts"
    assert manifest.verify(ckpt / "4") is None
    assert max(losses(metrics)) > 4   # steps past the checkpoint were logged, then lost

    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--metrics", str(metrics))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ckpt / '4'} (step 4" in r.stdout
    assert "dropped" in r.stdout     # the lost steps' records, logged again by the resumed run
    assert losses(metrics) == losses(reference / "m.jsonl")
    assert record.steps_on_disk(ckpt) == [4, 8, 12]
    assert not list(ckpt.glob("*.orbax-checkpoint-tmp*")), "the crashed save's leftovers are cleaned up"


def test_a_step_folder_appearing_during_the_run_stops_it_naming_the_flags(tmp_path):
    """A folder named like the next checkpoint, made while the run goes on: the run stops at that
    save with one line that names the flags to use (the store names settings; the CLI spells
    them), exit 1, and the folder is left as it was."""
    ckpt = tmp_path / "ckpt"
    proc = start(*TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", str(EVERY),
                 faults=("--seal-delay", "4:3"))   # step 4's save is in flight long enough to act
    wait_for(lambda: any(ckpt.glob("4.orbax-checkpoint-tmp*")), proc)
    (ckpt / "8").mkdir()
    (ckpt / "8" / "notes.txt").write_text("mine")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    problems = [line for line in err.splitlines() if not line.startswith("step ")]
    assert len(problems) == 1 and problems[0].startswith(
        f"rainier: stopped: --checkpoint-dir {ckpt}: {ckpt / '8'} appeared during the run; rainier-jax does not "
        f"overwrite it — move it out of {ckpt}, then --resume"), err
    assert (ckpt / "8" / "notes.txt").read_text() == "mine"


def test_damaged_newest_checkpoint_falls_back(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", ckpt)
    data = max((p for p in (ckpt / "12" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--metrics", str(tmp_path / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    damaged = [line for line in r.stderr.splitlines() if "does not match its sha256" in line]
    assert len(damaged) == 1 and str(ckpt / "12") in damaged[0] and "moved aside" in damaged[0], r.stderr
    assert f"resumed from {ckpt / '8'} (step 8" in r.stdout
    assert (ckpt / "12.damaged").is_dir()           # kept for inspection, never deleted
    assert manifest.verify(ckpt / "12") is None     # step 12 written again, intact
    ref = losses(reference / "m.jsonl")
    assert losses(tmp_path / "m.jsonl") == {s: ref[s] for s in (9, 10, 11, 12)}


def test_a_version_1_checkpoint_resumes_bitwise(reference, tmp_path):
    """A checkpoint written before the record kept the experiment as one table (format version 1:
    mesh, lnc, model and run at the top, the layout as text) resumes as it always did."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", ckpt)
    for newer in ("8", "12"):
        shutil.rmtree(ckpt / newer)
    meta = ckpt / "4" / "meta" / "metadata"
    rec = json.loads(meta.read_text())
    exp = rec.pop("experiment")
    rec.update(format="rainier-jax checkpoint v1", format_version=1, mesh=exp["mesh"], lnc=exp["lnc"],
               parallel=",".join(f"{a}={n}" for a, n in exp["layout"].items()), model=exp["model"], run=exp["run"])
    meta.write_text(json.dumps(rec))
    manifest.write(ckpt / "4")    # sealed as version 1 sealed it: the manifest lists the record
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--metrics", str(tmp_path / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ckpt / '4'} (step 4, saved as pp=1,dp=8,fsdp=1,tp=1 on trn2-mini-8)" in r.stdout
    ref = losses(reference / "m.jsonl")
    assert losses(tmp_path / "m.jsonl") == {s: ref[s] for s in range(5, 13)}
    assert record.newest_intact(ckpt).record.format_version == record.FORMAT_VERSION   # new saves: v2


def test_no_intact_checkpoint_is_exit_2(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", ckpt)
    for step in (4, 8, 12):
        meta = ckpt / str(step) / "meta" / "metadata"
        meta.write_text(meta.read_text().replace('"seed"', '"sEed"'))
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no intact checkpoint" in lines[0] and "12: meta/metadata does not match" in lines[0]


def test_resume_on_another_layout_and_extended(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", ckpt)
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--steps", "14", "--lr", "1e-3",
                "--parallel", "dp=2,tp=2,pp=2", "--microbatches", "2", "--metrics", str(tmp_path / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "--steps: 12 → 14" in r.stdout and "--lr: 0.003 → 0.001 from step 13" in r.stdout
    assert "resumed from" in r.stdout and "saved as pp=1,dp=8" in r.stdout
    assert sorted(losses(tmp_path / "m.jsonl")) == [13, 14]
    found = record.newest_intact(ckpt)
    saved = found.record.experiment
    assert found.step == 14 and saved.run.steps == 14 and saved.run.lr == 1e-3
    assert saved.layout_text == "pp=2,dp=2,fsdp=1,tp=2"


def test_resume_on_another_mesh(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", ckpt)
    shutil.rmtree(ckpt / "12")   # continue from step 8: the last 4 steps are compared
    r = rainier("train", "--checkpoint-dir", str(ckpt), "--resume", "--mesh", "trn2-mini-16",
                "--parallel", "dp=4,tp=4", "--metrics", str(tmp_path / "m.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "mesh trn2-mini-16: 16 ranks; layout dp=4,tp=4" in r.stdout
    ref, got = losses(reference / "m.jsonl"), losses(tmp_path / "m.jsonl")
    assert sorted(got) == [9, 10, 11, 12]
    for step in got:   # another layout: the parity harness's free-running bound
        assert abs(got[step] - ref[step]) <= FREE_LOSS_RTOL * abs(ref[step])


@pytest.mark.parametrize("flag,value,saved", [
    ("--seq", "32", "64"), ("--batch", "8", "16"), ("--seed", "1", "0"), ("--precision", "bf16-mixed", "fp32"),
])
def test_math_changes_are_refused(reference, flag, value, saved):
    r = rainier("train", "--checkpoint-dir", str(reference / "ckpt"), "--resume", flag, value, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"{flag} {value} differs from the checkpoint's {saved}" in r.stderr


def test_model_and_data_changes_are_refused(reference, tmp_path):
    r = rainier("train", "--checkpoint-dir", str(reference / "ckpt"), "--resume", "--model", "llama2-7b", timeout=60)
    assert r.returncode == 2 and "--model llama2-7b: vocab_size 32000 differs from the checkpoint's 256" in r.stderr
    text = tmp_path / "other.txt"
    text.write_text("other text " * 2000)
    r = rainier("train", "--checkpoint-dir", str(reference / "ckpt"), "--resume", "--data", str(text), timeout=60)
    assert r.returncode == 2 and "--data: the corpus" in r.stderr and "differs from the checkpoint's" in r.stderr
    assert r.stderr.count("\n") == 1


def test_finished_run_has_nothing_to_do(reference):
    r = rainier("train", "--checkpoint-dir", str(reference / "ckpt"), "--resume", timeout=60)
    assert r.returncode == 0 and "has completed all 12 steps" in r.stdout


@pytest.mark.parametrize("case", ["resume-missing", "resume-empty", "every-0", "keep-0", "below-file",
                                  "resume-no-dir", "every-no-dir", "fresh-into-used", "fewer-steps"])
def test_bad_checkpoint_input(reference, tmp_path, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    args, expect = {
        "resume-missing": (["--checkpoint-dir", str(tmp_path / "nope"), "--resume"], "does not exist"),
        "resume-empty": (["--checkpoint-dir", str(tmp_path / "empty"), "--resume"], "holds no checkpoint"),
        "every-0": (["--checkpoint-dir", str(tmp_path / "c"), "--checkpoint-every", "0"], "--checkpoint-every 0"),
        "keep-0": (["--checkpoint-dir", str(tmp_path / "c"), "--keep", "0"], "--keep 0"),
        "below-file": (["--checkpoint-dir", str(tmp_path / "file" / "c")], "cannot write there"),
        "resume-no-dir": (["--resume"], "--resume needs --checkpoint-dir"),
        "every-no-dir": (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint-dir"),
        "fresh-into-used": (["--checkpoint-dir", str(reference / "ckpt")], "already holds checkpoints"),
        "fewer-steps": (["--checkpoint-dir", str(reference / "ckpt"), "--resume", "--steps", "5"],
                        "--steps 5 is fewer than the 12 steps"),
    }[case]
    r = rainier("train", *args, timeout=60)
    assert r.returncode == 2, r.stdout
    assert r.stderr.count("\n") == 1 and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_docs_snippet_loads_a_checkpoint_with_orbax_alone(reference):
    """docs/CHECKPOINTS.md's plain-orbax block, run as written in a process that never imports
    rainier_jax, reads what rainier's own restore reads."""
    import hashlib

    import numpy as np

    from programs import program_for
    from rainier_jax.train.checkpoint import store as checkpoint

    doc = (ROOT / "docs" / "CHECKPOINTS.md").read_text()
    code = doc.split("<!-- plain-orbax -->\n```python\n", 1)[1].split("```", 1)[0]
    step_dir = reference / "ckpt" / "12"
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['rainier_jax'] = None\n" + code, str(step_dir)],
                       capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    name, _, embed = r.stdout.splitlines()
    assert name == "tiny step 12 of 12"
    state = checkpoint.restore(step_dir, program_for("dp=8").abstract_state)
    assert embed.split()[-1] == hashlib.sha256(np.asarray(state.params["embed"]).tobytes()).hexdigest()
