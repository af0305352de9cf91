"""The checkpoint directory: rainier reads, moves and deletes only what it wrote.

Foreign step-named folders survive --keep and are refused up front; a malformed run record or an
unreadable file is damage (fall back, or one line); a record of another format version is refused
and left in place; the manifest admits no unlisted file and no entry leading out of the step
directory; a failed save's temporary directory can be discarded and its error is not swallowed;
a checkpoint `keep` cannot delete is one warning naming the setting; the tests' hook holds a save
in flight; and a Checkpointer changes nothing outside itself (orbax's registry, logging levels).

Two real checkpoints (steps 1 and 2, of a tiny stand-in state) are written once per module; each
test copies them and damages the copy by hand. The CLI cases exit before JAX starts.
"""

import errno
import json
import os
import shutil
import subprocess
import threading

import jax.numpy as jnp
import pytest

from cli_runner import rainier
from rainier_jax.train.checkpoint import store
from rainier_jax.train import data as data_lib
from rainier_jax.train.checkpoint import manifest
from rainier_jax.train.checkpoint import record as resume
from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.hardware.topology import load_topology
from rainier_jax.parallel.experiment import resolve
from rainier_jax.spec.model import load_model
from rainier_jax.spec.run import RunConfig
from rainier_jax.train.state import TrainState

TINY = load_model("tiny")
TMP = ".orbax-checkpoint-tmp"   # orbax's name for a save not committed yet
NEWER = resume.FORMAT_VERSION + 1   # a record format version this rainier-jax does not read
RUN = RunConfig(steps=2, batch=16, seq=64, eval_every=0)


def record() -> dict:
    """A record the CLI accepts: with --resume from step 2 it has nothing to do and exits 0."""
    corpus = data_lib.load_corpus(None, TINY.vocab_size, RUN.seq)
    experiment = resolve(load_topology("trn2-mini-8"), TINY, "dp=8", RUN)
    return resume.run_record(experiment, mesh="trn2-mini-8", data_arg=None, corpus_source=corpus.source,
                             corpus_sha256=corpus.sha256, checkpoint_every=1)


def state(step: int) -> TrainState:
    return TrainState(params={"w": jnp.arange(8.0) * step}, opt_state={"mu": jnp.zeros(8)},
                      step=jnp.int32(step))


@pytest.fixture(scope="module")
def rec():
    return record()


@pytest.fixture(scope="module")
def made(tmp_path_factory, rec):
    d = tmp_path_factory.mktemp("made") / "ckpt"
    saver = store.Checkpointer(d, keep=3)
    for step in (1, 2):
        saver.save(step, state(step), resume.step_record(rec, step))
    saver.close()
    assert sorted(os.listdir(d)) == ["1", "2"]
    return d


@pytest.fixture
def ckpt(made, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(made, d, symlinks=True)
    return d


def edit_record(step_dir, change):
    """Rewrite the run record and re-seal the manifest: only the record itself is wrong."""
    path = step_dir / "meta" / "metadata"
    text = change(json.loads(path.read_text()))
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    manifest.write(step_dir)


def refused(r) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rainier: error:"), r.stderr
    return lines[0]


def largest_state_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# --- 1. folders rainier did not write ----------------------------------------------------------

def test_keep_cleanup_deletes_only_rainiers_own_checkpoints(made, tmp_path, rec):
    d = tmp_path / "ckpt"
    (d / "3").mkdir(parents=True)
    (d / "3" / "notes.txt").write_text("mine")        # a user's folder with a step-like name
    shutil.copytree(made / "1", d / "1")               # rainier's, but of a record version it does not read
    edit_record(d / "1", lambda r: {**r, "format_version": NEWER})
    saver = store.Checkpointer(d, keep=1)
    assert 3 not in saver._manager.all_steps()         # orbax does not take it for a step
    for step in (4, 5, 6):
        saver.save(step, state(step), resume.step_record(rec, step))
    saver.close()
    assert saver.saved == [4, 5, 6]
    assert (d / "3" / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(d)) == ["1", "3", "6"]    # 4 and 5 were rainier's own: deleted for --keep 1
    assert manifest.verify(d / "6") is None


def test_a_folder_appearing_during_the_run_is_not_overwritten(tmp_path, rec):
    d = tmp_path / "ckpt"
    saver = store.Checkpointer(d, keep=3)
    saver.save(1, state(1), resume.step_record(rec, 1))
    (d / "2").mkdir()
    (d / "2" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="2 appeared during the run"):
        saver.save(2, state(2), resume.step_record(rec, 2))
    saver.close()
    assert (d / "2" / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(d)) == ["1", "2"]


@pytest.mark.parametrize("kind", ["folder", "empty", "file", "symlink", "orbax-only"])
def test_foreign_step_entries_are_refused(made, tmp_path, kind):
    d = tmp_path / "ckpt"
    d.mkdir()
    foreign = d / "7"
    if kind == "folder":
        foreign.mkdir()
        (foreign / "notes.txt").write_text("mine")
    elif kind == "empty":
        foreign.mkdir()
    elif kind == "file":
        foreign.write_text("mine")
    elif kind == "symlink":   # even to a real checkpoint: rainier writes no symlinks
        foreign.symlink_to(made / "2")
    else:                     # another program's orbax store
        (foreign / "state").mkdir(parents=True)
        (foreign / "_CHECKPOINT_METADATA").write_text("{}")
    with pytest.raises(ConfigError, match=r"7 is not a rainier-jax checkpoint .*move it out of"):
        resume.steps_on_disk(d)
    assert os.path.lexists(foreign) and os.listdir(d) == ["7"]


@pytest.mark.parametrize("resuming", [False, True], ids=["fresh", "resume"])
def test_foreign_folder_is_refused_up_front_by_the_cli(ckpt, resuming):
    (ckpt / "7").mkdir()
    (ckpt / "7" / "notes.txt").write_text("mine")
    if not resuming:
        for step in ("1", "2"):
            shutil.rmtree(ckpt / step)
    r = rainier("train", "--checkpoint-dir", str(ckpt), *(["--resume"] if resuming else ["--steps", "2"]),
                timeout=60)
    line = refused(r)
    assert f"{ckpt / '7'} is not a rainier-jax checkpoint" in line and "move it out" in line
    assert (ckpt / "7" / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(ckpt)) == (["1", "2", "7"] if resuming else ["7"])   # nothing moved aside


# --- 2. malformed records and unreadable files are damage --------------------------------------

def _experiment(r, **changes):
    """The record with its `experiment` table changed (a value None drops the key)."""
    table = {**r["experiment"], **changes}
    return {**r, "experiment": {k: v for k, v in table.items() if v is not None}}


MALFORMED = {
    "missing-run": lambda r: _experiment(r, run=None),
    "missing-data-sha256": lambda r: {**r, "data": {k: v for k, v in r["data"].items() if k != "sha256"}},
    "step-not-int": lambda r: {**r, "step": "2"},
    "lr-not-number": lambda r: _experiment(r, run={**r["experiment"]["run"], "lr": "fast"}),
    "model-not-table": lambda r: _experiment(r, model=[]),
    "unknown-model-key": lambda r: _experiment(r, model={**r["experiment"]["model"], "colour": "blue"}),
    "step-of-another-folder": lambda r: {**r, "step": 7},
    "nested-too-deep": lambda r: "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_record_falls_back(ckpt, case):
    edit_record(ckpt / "2", MALFORMED[case])
    found = resume.newest_intact(ckpt)
    assert found.step == 1 and found.record.step == 1
    [(path, why)] = found.rejected
    assert path == ckpt / "2" and "run record" in why


def test_no_readable_record_left_is_one_line(ckpt):
    for step in ("1", "2"):
        edit_record(ckpt / step, MALFORMED["missing-run"])
    line = refused(rainier("train", "--checkpoint-dir", str(ckpt), "--resume", timeout=60))
    assert "no intact checkpoint" in line and "2: run record malformed" in line
    assert sorted(os.listdir(ckpt)) == ["1", "2"]


def _name_too_long(step_dir):
    with open(step_dir / manifest.MANIFEST, "a") as f:
        f.write(f"{'0' * 64}  state/{'x' * 300}\n")


def _state_symlinked(step_dir):   # the same files, but read through a symlink
    shutil.copytree(step_dir / "state", step_dir.parent / "elsewhere")
    shutil.rmtree(step_dir / "state")
    (step_dir / "state").symlink_to(step_dir.parent / "elsewhere")


UNREADABLE = {"name-too-long": _name_too_long, "state-is-a-symlink": _state_symlinked}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_step_directory_falls_back(ckpt, case):
    UNREADABLE[case](ckpt / "2")
    found = resume.newest_intact(ckpt)
    assert found.step == 1 and [p for p, _ in found.rejected] == [ckpt / "2"]


def test_fifo_does_not_hang(ckpt):
    """A FIFO where the record should be, left out of the manifest: opened for reading it would
    wait for a writer for ever."""
    step_dir = ckpt / "2"
    lines = (step_dir / manifest.MANIFEST).read_text().splitlines(keepends=True)
    (step_dir / manifest.MANIFEST).write_text("".join(l for l in lines if not l.endswith("  meta/metadata\n")))
    fifo = step_dir / "meta" / "metadata"
    fifo.unlink()
    os.mkfifo(fifo)
    result = {}
    t = threading.Thread(target=lambda: result.update(found=resume.newest_intact(ckpt)), daemon=True)
    t.start()
    t.join(timeout=20)
    if t.is_alive():   # unblock the reader so the thread can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("newest_intact hung on a FIFO")
    assert result["found"].step == 1 and [p for p, _ in result["found"].rejected] == [step_dir]
    # A FIFO the manifest lists is not a regular file (and is not waited on either).
    with open(step_dir / manifest.MANIFEST, "a") as f:
        f.write(f"{'0' * 64}  meta/metadata\n")
    assert manifest.verify(step_dir) == "meta/metadata unreadable (not a regular file)"


# --- 3. the record's format version ------------------------------------------------------------

def _version_1(r):
    """The record as version 1 wrote it: experiment settings at the top, the layout as text, and
    the version only in `format` (records from before the field)."""
    e = r["experiment"]
    rest = {k: v for k, v in r.items() if k not in ("experiment", "format_version")}
    return {**rest, "format": "rainier-jax checkpoint v1", "mesh": e["mesh"], "lnc": e["lnc"], "model": e["model"],
            "run": e["run"], "parallel": ",".join(f"{a}={n}" for a, n in e["layout"].items())}


def test_records_carry_a_version_and_old_ones_read_as_version_1(made, ckpt):
    assert json.loads((made / "2" / "meta" / "metadata").read_text())["format_version"] == resume.FORMAT_VERSION
    edit_record(ckpt / "2", _version_1)
    found = resume.newest_intact(ckpt)
    assert found.step == 2 and not found.rejected and found.record.format_version == 1


@pytest.mark.parametrize("how", ["field", "format-string", "field-and-damaged"])
def test_another_record_version_is_refused_and_left_in_place(ckpt, how):
    change = {"field": lambda r: {**r, "format_version": NEWER},
              "format-string": lambda r: {k: v for k, v in r.items() if k != "format_version"}
              | {"format": f"rainier-jax checkpoint v{NEWER}"},
              "field-and-damaged": lambda r: {**r, "format_version": NEWER}}[how]
    edit_record(ckpt / "2", change)
    if how == "field-and-damaged":   # a later format may seal differently: still not damage
        (ckpt / "2" / manifest.MANIFEST).write_text("garbage\n")
    with pytest.raises(ConfigError, match=f"record format version {NEWER}; this rainier-jax reads versions 1 and 2"):
        resume.newest_intact(ckpt)
    assert sorted(os.listdir(ckpt)) == ["1", "2"]


def test_another_record_version_through_the_cli(ckpt):
    edit_record(ckpt / "2", lambda r: {**r, "format_version": NEWER})
    before = (ckpt / "2" / "meta" / "metadata").read_bytes()
    line = refused(rainier("train", "--checkpoint-dir", str(ckpt), "--resume", timeout=60))
    assert f"{ckpt / '2'} holds a checkpoint of record format version {NEWER}" in line and "reads versions 1 and 2" in line
    assert sorted(os.listdir(ckpt)) == ["1", "2"] and (ckpt / "2" / "meta" / "metadata").read_bytes() == before


# --- 4. what the manifest admits ---------------------------------------------------------------

def _stray_file(step_dir):
    (step_dir / "state" / "d" / "extra").write_bytes(b"not written by orbax")


def _entry_up(step_dir):
    outside = step_dir.parent / "outside.bin"
    outside.write_bytes(b"x" * 100)
    with open(step_dir / manifest.MANIFEST, "a") as f:
        f.write(f"{manifest.file_sha256(outside)}  ../outside.bin\n")


def _entry_absolute(step_dir):
    outside = step_dir.parent / "outside.bin"
    outside.write_bytes(b"x" * 100)
    with open(step_dir / manifest.MANIFEST, "a") as f:
        f.write(f"{manifest.file_sha256(outside)}  {outside}\n")


def _symlink_out(step_dir):   # a listed data file replaced by a symlink to an identical copy outside
    data = largest_state_file(step_dir)
    outside = step_dir.parent / "outside.bin"
    shutil.copyfile(data, outside)
    data.unlink()
    data.symlink_to(os.path.relpath(outside, data.parent))


MANIFEST_CASES = {"unlisted-file": (_stray_file, "is not listed in MANIFEST.sha256"),
                  "entry-../": (_entry_up, "not a file inside the checkpoint"),
                  "entry-absolute": (_entry_absolute, "not a file inside the checkpoint"),
                  "symlink-leading-out": (_symlink_out, "symbolic link")}


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_manifest_admits_only_its_own_files(ckpt, case):
    damage, why = MANIFEST_CASES[case]
    damage(ckpt / "2")
    assert why in manifest.verify(ckpt / "2")
    found = resume.newest_intact(ckpt)
    assert found.step == 1 and [p for p, _ in found.rejected] == [ckpt / "2"]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_sha256sum_still_checks_a_checkpoint(ckpt):
    r = subprocess.run(["sha256sum", "-c", "--quiet", manifest.MANIFEST], cwd=ckpt / "2", capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    _stray_file(ckpt / "2")   # what sha256sum cannot see, rainier does
    assert "is not listed" in manifest.verify(ckpt / "2")


# --- 5. a failed save ----------------------------------------------------------------------------

@pytest.mark.parametrize("error,raised_by", [
    (OSError(errno.ENOSPC, "No space left on device"), "save"),
    (RuntimeError("No space left on device"), "close"),
], ids=["OSError-save", "RuntimeError-close"])
def test_failed_save_raises_and_discard_uncommitted_frees_it(tmp_path, rec, monkeypatch, error, raised_by):
    d = tmp_path / "ckpt"
    saver = store.Checkpointer(d, keep=1)
    saver.save(1, state(1), resume.step_record(rec, 1))

    seal = manifest.write

    def full_disk(root):   # the seal runs in orbax's background thread; step 1 may still be sealing
        if root.name.startswith("2."):
            raise error
        return seal(root)
    monkeypatch.setattr(manifest, "write", full_disk)
    saver.save(2, state(2), resume.step_record(rec, 2))  # returns: the write goes on in the background
    with pytest.raises(type(error), match="No space left on device"):
        if raised_by == "save":
            saver.save(3, state(3), resume.step_record(rec, 3))
        else:
            saver.close()
    assert [p.name for p in d.glob(f"2{TMP}*")]   # the failed save's leftovers
    removed = saver.discard_uncommitted()
    assert [p.name for p in removed] == [f"2{TMP}"]
    assert sorted(os.listdir(d)) == ["1"] and manifest.verify(d / "1") is None   # committed: untouched
    if raised_by == "save":
        saver.close()


def test_a_checkpoint_keep_cannot_delete_is_one_warning_naming_the_setting(tmp_path, rec, monkeypatch, capsys):
    """The run goes on; the warning goes to the Checkpointer's `warn` with the setting marked (the
    CLI spells it as its flag), or by default to stderr with the setting's bare name."""
    d = tmp_path / "ckpt"
    replace = os.replace

    def refuse(src, dst):   # the first step of a deletion: the rename into orbax's temporary names
        if str(dst).endswith(".deleting"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return replace(src, dst)
    monkeypatch.setattr(os, "replace", refuse)
    warned = []
    saver = store.Checkpointer(d, keep=1, warn=warned.append)
    for step in (1, 2):
        saver.save(step, state(step), resume.step_record(rec, step))
    saver.close()
    assert warned == [f"{setting('keep')} 1: could not delete {d / '1'} (Permission denied); left in place"]
    assert sorted(os.listdir(d)) == ["1", "2"]
    capsys.readouterr()
    saver = store.Checkpointer(d, keep=1)
    saver.save(3, state(3), resume.step_record(rec, 3))
    saver.close()
    lines = set(capsys.readouterr().err.splitlines())
    assert lines == {f"rainier: keep 1: could not delete {d / s} (Permission denied); left in place" for s in "12"}


# --- 6. the tests' hook, and nothing outside the Checkpointer -----------------------------------

def test_before_seal_holds_a_save_in_flight(tmp_path, rec, monkeypatch):
    """`store.before_seal` runs once the items are written, before the manifest and the commit:
    while it runs, the save is an uncommitted temporary directory and nothing else."""
    d = tmp_path / "ckpt"
    inside, release, seen = threading.Event(), threading.Event(), []

    def hold(step):
        seen.append((step, sorted(p.name for p in d.iterdir())))
        inside.set()
        release.wait(30)
    monkeypatch.setattr(store, "before_seal", hold)
    saver = store.Checkpointer(d, keep=3)
    saver.save(1, state(1), resume.step_record(rec, 1))
    assert inside.wait(30)
    [(step, names)] = seen
    assert step == 1 and len(names) == 1 and names[0].startswith(f"1{TMP}"), names
    assert not (d / names[0] / manifest.MANIFEST).exists() and resume.steps_on_disk(d) == []
    release.set()
    saver.close()
    assert resume.steps_on_disk(d) == [1] and manifest.verify(d / "1") is None


def test_a_checkpointer_leaves_orbax_and_logging_as_they_were(tmp_path, rec):
    """The array handler a Checkpointer saves with (not replica-parallel in one process) is its
    own, not a registration in orbax's global registry, which `restore` and any other orbax user
    in the process read; and saving sets no logging level."""
    import logging

    import jax
    import orbax.checkpoint as ocp

    def registered():
        return [ocp.type_handlers.get_type_handler(t) for t in ocp.type_handlers.supported_types()]

    handlers, levels = registered(), {n: logging.getLogger(n).level for n in ("absl", "")}
    saver = store.Checkpointer(tmp_path / "ckpt", keep=1)
    saver.save(1, state(1), resume.step_record(rec, 1))
    saver.close()
    assert all(a is b for a, b in zip(registered(), handlers, strict=True))
    assert {n: logging.getLogger(n).level for n in levels} == levels
    own = store._type_handlers().get(jax.Array)
    assert own is not ocp.type_handlers.get_type_handler(jax.Array)
    assert own._use_replica_parallel is False   # orbax keeps the setting private
