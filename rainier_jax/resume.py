"""What a checkpoint records about its run, and what a resumed run may change.

A checkpoint's `meta` item (plain JSON, orbax's JsonSave) holds the resolved settings of the run
that wrote it. `--resume` starts from those settings: a flag the user gives on resume either may
change (the layout and the mesh — restoring reshards; `--steps` and `--lr`, said in a line), or
changes the math and is refused with one line naming the setting, its saved and its new value.
Choosing the checkpoint (newest first, manifest verified) happens here too, before JAX starts:
stdlib only.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from rainier_jax import manifest
from rainier_jax.config import ConfigError

FORMAT = "rainier-jax checkpoint v1"
META_FILE = Path("meta") / "metadata"   # where orbax's JsonSave puts the `meta` item
STATE_ITEM = "state"

# Flags that change what is computed: resuming with another value would be a different run.
MATH_FLAGS = ("batch", "seq", "seed", "precision")
# Flags that only place the computation or extend the run: the saved value is the default.
LAYOUT_FLAGS = ("parallel", "schedule", "microbatches", "virtual_stages")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_record(*, mesh: str, lnc: int, layout: str, model: dict, run: dict, data_arg: str | None,
               corpus_source: str, corpus_sha256: str, checkpoint_every: int = 0, keep: int = 3) -> dict:
    """Everything but the step: the settings a resumed run starts from (see CHECKPOINTS.md)."""
    return {
        "format": FORMAT,
        "mesh": mesh, "lnc": lnc, "parallel": layout,
        "model": model,
        "run": run,
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
            "rng": {"seed": record["run"]["seed"], "counter": step,
                    "scheme": "counter-based: batch t and rounding bits of update t hash (seed, t)"},
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def absolute_if_path(arg: str | None) -> str | None:
    """Paths are stored absolute so a resume from another working directory finds them; built-in
    names stay names."""
    if arg is None:
        return None
    p = Path(arg)
    return str(p.resolve()) if (p.suffix or "/" in arg or p.exists()) else arg


# --- the checkpoint directory -------------------------------------------------------------------

def steps_on_disk(directory: Path) -> list[int]:
    """Committed checkpoints (orbax names them by step; temporaries carry a suffix), oldest first."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


@dataclasses.dataclass
class Found:
    step: int
    path: Path
    meta: dict
    rejected: list[tuple[Path, str]]   # newer checkpoints that failed verification, and why


def read_meta(step_dir: Path) -> dict:
    meta = json.loads((step_dir / META_FILE).read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} record")
    return meta


def newest_intact(directory: Path, *, flag_name: str = "--resume") -> Found:
    """The newest checkpoint whose files match its manifest and whose record parses."""
    if not directory.exists():
        raise ConfigError(f"{flag_name}: --checkpoint-dir {directory} does not exist; "
                          "run without --resume to start a new run there")
    steps = steps_on_disk(directory)
    if not steps:
        raise ConfigError(f"{flag_name}: --checkpoint-dir {directory} holds no checkpoint; "
                          "run without --resume to start a new run there")
    rejected = []
    for step in reversed(steps):
        path = directory / str(step)
        problem = manifest.verify(path)
        if problem is None:
            try:
                return Found(step, path, read_meta(path), rejected)
            except (OSError, ValueError) as e:
                problem = f"run record {META_FILE} unreadable ({e})"
        rejected.append((path, problem))
    raise ConfigError(f"{flag_name}: no intact checkpoint in {directory}: "
                      + "; ".join(f"{p.name}: {why}" for p, why in rejected))


def set_aside(path: Path) -> Path:
    """Move a damaged checkpoint out of the way (orbax ignores non-numeric names), never delete
    it: the run will write that step again, and the damaged files stay for inspection."""
    n = 0
    while (target := path.with_name(f"{path.name}.damaged" + (f".{n}" if n else ""))).exists():
        n += 1
    os.replace(path, target)
    return target


# --- settings -----------------------------------------------------------------------------------

def merge(meta: dict, given: dict[str, Any], *, where: str) -> tuple[dict[str, Any], list[str]]:
    """Check the flags the user gave on resume (`given` holds only those) against the saved run.
    A change to the math is a ConfigError; run settings not given come from `meta["run"]`.
    Returns the placement and checkpoint flags of the resumed run (saved unless given), and
    lines about the settings it changes."""
    saved_run = meta["run"]
    notes = []
    for name in MATH_FLAGS:
        if name in given and given[name] != saved_run[name]:
            raise ConfigError(f"--resume: {flag(name)} {given[name]} differs from the checkpoint's "
                              f"{saved_run[name]} ({where}); it changes the computation — drop "
                              f"{flag(name)} to continue the run, or start a new --checkpoint-dir")
    done = meta["step"]
    steps = given.get("steps", saved_run["steps"])
    if steps < done:
        raise ConfigError(f"--resume: --steps {steps} is fewer than the {done} steps the checkpoint "
                          f"has completed ({where}); give --steps above {done} to extend the run")
    if steps != saved_run["steps"]:
        notes.append(f"--steps: {saved_run['steps']} → {steps} (warmup and cosine decay are "
                     f"recomputed for the new horizon, from step {done + 1} on)")
    if "lr" in given and given["lr"] != saved_run["lr"]:
        notes.append(f"--lr: {saved_run['lr']:g} → {given['lr']:g} from step {done + 1} on "
                     "(same warmup and cosine shape)")

    mesh, lnc = given.get("mesh", meta["mesh"]), given.get("lnc", meta["lnc"])
    flags = {
        "mesh": mesh, "lnc": lnc,
        # A saved layout only applies on the mesh it was saved on; elsewhere the default (dp = all).
        "parallel": given.get("parallel", meta["parallel"] if (mesh, lnc) == (meta["mesh"], meta["lnc"]) else None),
        "data": given.get("data", meta["data"]["arg"]),
        "checkpoint_every": given.get("checkpoint_every", meta["checkpoint"]["every"] or None),
        "keep": given.get("keep", meta["checkpoint"]["keep"]),
    }
    return flags, notes


def check_model(meta: dict, model: dict, given_name: str | None, where: str) -> None:
    """Refuse a model whose dimensions differ from the saved one (its name alone may differ)."""
    saved = meta["model"]
    for key, value in model.items():
        if key != "name" and saved.get(key) != value:
            raise ConfigError(f"--resume: --model {given_name}: {key} {value} differs from the checkpoint's "
                              f"{saved.get(key)} ({where}); drop --model to continue with "
                              f"{saved['name']}, or start a new --checkpoint-dir")


def check_corpus(meta: dict, data_arg: str | None, source: str, sha256: str, where: str) -> None:
    saved = meta["data"]
    if sha256 != saved["sha256"]:
        both_default = saved["arg"] is None and data_arg is None
        hint = (" (the default corpus is this Python's own stdlib sources, which differ between versions: "
                f"the checkpoint was written under Python {meta.get('python')})" if both_default else "")
        raise ConfigError(f"--resume: --data: the corpus {source} (sha256 {sha256[:12]}) differs from the "
                          f"checkpoint's {saved['source']} (sha256 {saved['sha256'][:12]}) ({where}){hint}; "
                          "pass the data the run was trained on")
