"""What a checkpoint records about its run, and what a resumed run may change.

A checkpoint's `meta` item (plain JSON, orbax's JsonSave) holds the resolved experiment of the run
that wrote it (mesh, layout, model and run settings, as structured fields) with a format version.
A resumed run starts from those settings: a setting given again on resume either may change (the
layout and the mesh — restoring reshards; `steps` and `lr`, said in a line), or changes the math
and is refused with one line naming the setting, its saved and its new value. Choosing the
checkpoint (newest first, manifest verified, run record validated) happens here too, before JAX
starts: no JAX imported. So does telling rainier's step folders from anyone else's
(docs/CHECKPOINTS.md, "What rainier-jax writes and deletes").
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from rainier_jax.train.checkpoint import manifest
from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.config.typed import from_mapping
from rainier_jax.parallel.experiment import Experiment
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.spec.model import ModelConfig
from rainier_jax.train.checkpoint.model_record import OwnModelRecord, model_record
from rainier_jax.spec.run import RunConfig

FORMAT = "rainier-jax checkpoint v2"
# The record's layout version. Bump it with any change an older rainier-jax could not read (a new
# key included): an older one then refuses the record in one line instead of taking it for damage.
# Records written before the field existed are version 1. Version 2 keeps the experiment as one
# structured table (`experiment`: mesh, lnc, layout as axis sizes, model, run); version 1 had
# `mesh`, `lnc`, `model` and `run` at the top and the layout as text (`parallel`), and is read by
# converting it (`_from_version_1`).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_FAMILY_VERSION = re.compile(r"rainier-jax checkpoint v([1-9][0-9]{0,5})")   # every version's `format`
META_FILE = Path("meta") / "metadata"   # where orbax's JsonSave puts the `meta` item
STATE_ITEM = "state"
_RECORD_LIMIT = 1 << 20   # a record is a few KB; more is not one

# Run settings that change what is computed: resuming with another value would be a different run.
MATH_SETTINGS = ("batch", "seq", "seed", "precision")
DEFAULT_KEEP = 3   # checkpoints kept when the run does not say (the `keep` setting)
# Settings outside the run settings that a resumed run takes from its record unless given (`merge`).
RESUMED_SETTINGS = ("mesh", "lnc", "parallel", "data", "checkpoint_every", "keep")


def run_record(experiment: Experiment, *, mesh: str, data_arg: str | None, corpus_source: str,
               corpus_sha256: str, checkpoint_every: int = 0, keep: int = 3) -> dict:
    """Everything but the step: the settings a resumed run starts from (see docs/CHECKPOINTS.md).
    `mesh` is how the topology was named: a built-in name, or the mesh file's absolute path."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "experiment": {"mesh": mesh, "lnc": experiment.topology.lnc, "layout": experiment.layout.axis_sizes(),
                       "model": model_record(experiment.model), "run": dataclasses.asdict(experiment.run)},
        "data": {"arg": data_arg, "source": corpus_source, "sha256": corpus_sha256},
        "checkpoint": {"every": checkpoint_every, "keep": keep},
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def step_record(record: dict, step: int) -> dict:
    """The record for the checkpoint of completed step `step`: the data position and the RNG
    state are both this counter, because every batch and every stochastic-rounding bit is a pure
    function of (seed, step) — nothing else to save."""
    return {**record, "step": step,
            "data_position": {"next_batch": step},
            "rng": {"seed": record["experiment"]["run"]["seed"], "counter": step,
                    "scheme": "counter-based: batch t and rounding bits of update t hash (seed, t)"},
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def absolute_if_path(arg: str | None) -> str | None:
    """Paths are stored absolute so a resume from another working directory finds them; built-in
    names stay names."""
    if arg is None:
        return None
    p = Path(arg)
    return str(p.resolve()) if (p.suffix or "/" in arg or p.exists()) else arg


# --- the run record's structure -----------------------------------------------------------------
# One place that says what a readable record is: everything merge, check_model, check_corpus and
# the train command read, with its type (from_mapping rejects missing keys and wrong types). A key
# that run_record or step_record gains and a resumed run reads needs a field here.

@dataclasses.dataclass(frozen=True)
class ExperimentRecord:
    """The resolved experiment as a checkpoint keeps it (`parallel.experiment.Experiment` without
    what is derived again on resume: the topology is read from `mesh`, the placement recomputed)."""
    mesh: str
    lnc: int
    layout: ParallelLayout
    model: ModelConfig | OwnModelRecord
    run: RunConfig

    def __post_init__(self):
        if self.lnc < 1 or min(self.layout.axis_sizes().values()) < 1:
            raise ValueError(f"lnc {self.lnc}, layout {self.layout.axis_sizes()} (want lnc >= 1, axis sizes >= 1)")

    @property
    def layout_text(self) -> str:
        """Every axis, size 1 included: "pp=1,dp=2,fsdp=2,tp=2" (how resumes are reported)."""
        return ",".join(f"{a}={n}" for a, n in self.layout.axis_sizes().items())


@dataclasses.dataclass(frozen=True)
class _DataRecord:
    arg: str | None
    source: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class _SavingRecord:
    every: int
    keep: int

    def __post_init__(self):
        if self.every < 0 or self.keep < 1:
            raise ValueError(f"every {self.every}, keep {self.keep} (want every >= 0, keep >= 1)")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A checkpoint's run record, validated: what `newest_intact` hands a resumed run."""
    format: str
    step: int
    experiment: ExperimentRecord
    data: _DataRecord
    checkpoint: _SavingRecord
    format_version: int = FORMAT_VERSION   # the version it was written in (1 is read converted)
    python: str = ""
    data_position: dict = dataclasses.field(default_factory=dict)
    rng: dict = dataclasses.field(default_factory=dict)
    saved_at: str = ""

    def __post_init__(self):
        if self.step < 0:
            raise ValueError(f"step {self.step} (want step >= 0)")


def _from_version_1(record: dict) -> dict:
    """A version-1 record in version 2's shape. The layout text is what version 1 always wrote
    ("pp=1,dp=2,fsdp=2,tp=2"); anything else in it is damage, reported like any other."""
    moved = ("mesh", "lnc", "parallel", "model", "run")
    experiment = {k: record[k] for k in moved if k in record}
    if isinstance(experiment.get("parallel"), str):
        sizes = {}
        for part in experiment.pop("parallel").split(","):
            axis, _, n = part.partition("=")
            sizes[axis.strip()] = int(n) if n.strip().isdigit() else n
        experiment["layout"] = sizes
    rest = {k: v for k, v in record.items() if k not in moved}
    return {**rest, "experiment": experiment}


def _record_version(record) -> int | None:
    """The format version a record declares: None when it is no rainier-jax record at all (or
    declares its version in a form no version uses, which is damage too)."""
    if not isinstance(record, dict) or not isinstance(record.get("format"), str):
        return None
    named = _FAMILY_VERSION.fullmatch(record["format"])
    if named is None:
        return None
    # `format_version` says it; records from before the field have it only in `format` ("… v1").
    version = record.get("format_version", int(named.group(1)))
    return version if isinstance(version, int) and not isinstance(version, bool) and version >= 1 else None


def validate_record(record, step: int) -> RunRecord:
    """The record of checkpoint `step`, typed, or a ConfigError (one line) saying what is wrong
    with it. Expects a record of one of READABLE_VERSIONS."""
    where = META_FILE.as_posix()
    version = _record_version(record)
    if version is None:
        raise ConfigError(f"{where}: not a rainier-jax checkpoint record")
    if version == 1:
        record = {**_from_version_1(record), "format_version": 1}
    # Top-level keys this version does not know are informational at most: ignored. Inside the
    # experiment an unknown key is a setting this version cannot apply, so from_mapping refuses it.
    known = {f.name for f in dataclasses.fields(RunRecord)}
    parsed = from_mapping(RunRecord, {k: v for k, v in record.items() if k in known}, where=where)
    if parsed.step != step:
        raise ConfigError(f"{where}.step: {parsed.step}, but the folder is step {step}")
    return parsed


def _load_json(path: Path):
    """JSON from a regular file (no FIFO wait, no symlink); OSError or ValueError otherwise."""
    try:
        return json.loads(manifest.read_regular(path, _RECORD_LIMIT).decode("utf-8"))
    except RecursionError:   # nested deeper than the parser's stack: not a record
        raise ValueError("nested too deeply") from None


# --- the checkpoint directory -------------------------------------------------------------------

_STEP_NAME = re.compile(r"0|[1-9][0-9]*")   # orbax's own step names (ASCII digits, no leading zero)


def is_step_name(name: str) -> bool:
    return _STEP_NAME.fullmatch(name) is not None


def foreign(path: Path) -> str | None:
    """Why the step-named entry `path` is not one of rainier's checkpoints, or None if it is one
    (intact or damaged). Rainier's are real directories holding MANIFEST.sha256 or meta/metadata
    — the two paths every checkpoint rainier writes has, and that no bare orbax checkpoint has.
    Anything else (a file, a symlink, another program's folder) is not rainier's: it is never
    read as a checkpoint, moved aside or deleted."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return "it is a symbolic link; rainier-jax writes none"
        if not stat.S_ISDIR(mode):
            return "it is not a directory"
        os.listdir(path)   # a folder we cannot even list cannot be told to be ours
        if not any(os.path.lexists(path / marker) for marker in (manifest.MANIFEST, META_FILE)):
            return f"it has neither {manifest.MANIFEST} nor {META_FILE.as_posix()}"
    except OSError as e:
        return f"it cannot be read: {e.strerror}"
    return None


def is_own(path: Path) -> bool:
    """May rainier delete this step folder (--keep)? Only when it is unmistakably a checkpoint it
    wrote: a real directory whose MANIFEST.sha256 is a regular file and whose meta/metadata is a
    run record of this format version for the folder's own step. Hashes are not checked (an old
    checkpoint is deleted whether or not it is intact); anything less certain is left alone."""
    try:
        if not is_step_name(path.name) or not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        os.close(manifest.open_regular(path / manifest.MANIFEST))
        record = _load_json(path / META_FILE)
    except (OSError, ValueError):
        return False
    return _record_version(record) in READABLE_VERSIONS and record.get("step") == int(path.name)


def steps_on_disk(directory: Path) -> list[int]:
    """Rainier's committed checkpoints (orbax names them by step; temporaries and folders moved
    aside carry a suffix), oldest first. A step-named entry that is not rainier's is refused (a
    ConfigError naming it): orbax would take it for a step — skip saves below it, delete it for
    --keep, overwrite it — and --resume would read it or move it aside."""
    if not os.path.isdir(directory):   # os.path: False, not an OSError, for a name too long
        return []
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise ConfigError(f"{setting('checkpoint_dir')} {directory}: cannot read it ({e.strerror}); "
                          "give a directory you can read") from None
    steps = []
    for name in filter(is_step_name, names):
        if (why := foreign(directory / name)) is not None:
            raise ConfigError(f"{setting('checkpoint_dir')} {directory}: {directory / name} is not a rainier-jax "
                              f"checkpoint ({why}); rainier-jax never reads, moves or deletes a folder it did not "
                              f"write — move it out of {directory}, or choose another {setting('checkpoint_dir')}")
        steps.append(int(name))
    return sorted(steps)


@dataclasses.dataclass
class Found:
    step: int
    path: Path
    record: RunRecord
    rejected: list[tuple[Path, str]]   # newer checkpoints that failed verification, and why


def _readable_versions() -> str:
    *older, newest = READABLE_VERSIONS
    return f"versions {', '.join(map(str, older))} and {newest}" if older else f"version {newest}"


def _problem(path: Path, step: int, asked_by: str) -> tuple[RunRecord | None, str | None]:
    """(validated record, None) for an intact checkpoint, (None, why) for a damaged one. A record
    of another format version is neither: a ConfigError, so it is never moved aside."""
    try:
        record, unreadable = _load_json(path / META_FILE), None
    except (OSError, ValueError) as e:
        record, unreadable = None, f"run record {META_FILE.as_posix()} unreadable ({getattr(e, 'strerror', None) or e})"
    # Asked before the manifest: a later format may seal its files differently, and refusing
    # loses nothing where calling it damage would move it aside.
    version = _record_version(record)
    if version is not None and version not in READABLE_VERSIONS:
        raise ConfigError(f"{setting(asked_by)}: {path} holds a checkpoint of record format version {version}; "
                          f"this rainier-jax reads {_readable_versions()} — continue that run with the rainier-jax "
                          f"that wrote it, or start a new {setting('checkpoint_dir')}")
    if (why := manifest.verify(path) or unreadable) is not None:
        return None, why
    try:
        return validate_record(record, step), None
    except ConfigError as e:
        return None, f"run record malformed ({e})"   # shown as the reason for moving it aside


def newest_intact(directory: Path, *, asked_by: str = "resume") -> Found:
    """The newest checkpoint whose files match its manifest and whose record is valid; newer
    damaged ones are listed in `rejected` (the caller moves them aside)."""
    if not os.path.exists(directory):
        raise ConfigError(f"{setting(asked_by)}: {setting('checkpoint_dir')} {directory} does not exist; "
                          f"run without {setting('resume')} to start a new run there")
    steps = steps_on_disk(directory)
    if not steps:
        raise ConfigError(f"{setting(asked_by)}: {setting('checkpoint_dir')} {directory} holds no checkpoint; "
                          f"run without {setting('resume')} to start a new run there")
    rejected = []
    for step in reversed(steps):
        path = directory / str(step)
        record, problem = _problem(path, step, asked_by)
        if problem is None:
            return Found(step, path, record, rejected)
        rejected.append((path, " ".join(problem.split())))   # one line, whatever a file name holds
    raise ConfigError(f"{setting(asked_by)}: no intact checkpoint in {directory}: "
                      + "; ".join(f"{p.name}: {why}" for p, why in rejected))


def set_aside(path: Path) -> Path:
    """Move a damaged checkpoint out of the way (orbax ignores non-numeric names), never delete
    it: the run will write that step again, and the damaged files stay for inspection."""
    n = 0
    while os.path.lexists(target := path.with_name(f"{path.name}.damaged" + (f".{n}" if n else ""))):
        n += 1
    os.replace(path, target)
    return target


# --- settings -----------------------------------------------------------------------------------

def merge(saved: RunRecord, given: dict[str, Any], *, where: str) -> tuple[dict[str, Any], list[str]]:
    """Check the settings the user gave on resume (`given` holds only those) against the saved
    run. A change to the math is a ConfigError; run settings not given come from the record.
    Returns the placement and checkpoint settings of the resumed run (saved unless given), and
    lines about the settings it changes."""
    exp = saved.experiment
    saved_run = dataclasses.asdict(exp.run)
    notes = []
    for name in MATH_SETTINGS:
        if name in given and given[name] != saved_run[name]:
            raise ConfigError(f"{setting('resume')}: {setting(name)} {given[name]} differs from the checkpoint's "
                              f"{saved_run[name]} ({where}); it changes the computation — drop "
                              f"{setting(name)} to continue the run, or start a new {setting('checkpoint_dir')}")
    done = saved.step
    steps = given.get("steps", exp.run.steps)
    if steps < done:
        raise ConfigError(f"{setting('resume')}: {setting('steps')} {steps} is fewer than the {done} steps the "
                          f"checkpoint has completed ({where}); give {setting('steps')} above {done} to extend the run")
    if steps != exp.run.steps:
        notes.append(f"{setting('steps')}: {exp.run.steps} → {steps} (warmup and cosine decay are "
                     f"recomputed for the new horizon, from step {done + 1} on)")
    if "lr" in given and given["lr"] != exp.run.lr:
        notes.append(f"{setting('lr')}: {exp.run.lr:g} → {given['lr']:g} from step {done + 1} on "
                     "(same warmup and cosine shape)")

    mesh, lnc = given.get("mesh", exp.mesh), given.get("lnc", exp.lnc)
    settings = {
        "mesh": mesh, "lnc": lnc,
        # A saved layout only applies on the mesh it was saved on; elsewhere the default (dp = all).
        "parallel": given.get("parallel", exp.layout if (mesh, lnc) == (exp.mesh, exp.lnc) else None),
        "data": given.get("data", saved.data.arg),
        "checkpoint_every": given.get("checkpoint_every", saved.checkpoint.every or None),
        "keep": given.get("keep", saved.checkpoint.keep),
    }
    return settings, notes


def check_corpus(saved: RunRecord, data_arg: str | None, source: str, sha256: str, where: str) -> None:
    data = saved.data
    if sha256 != data.sha256:
        both_default = data.arg is None and data_arg is None
        hint = (" (the default corpus is this Python's own stdlib sources, which differ between versions: "
                f"the checkpoint was written under Python {saved.python})" if both_default else "")
        raise ConfigError(f"{setting('resume')}: {setting('data')}: the corpus {source} (sha256 {sha256[:12]}) "
                          f"differs from the checkpoint's {data.source} (sha256 {data.sha256[:12]}) ({where}){hint}; "
                          "pass the data the run was trained on")
