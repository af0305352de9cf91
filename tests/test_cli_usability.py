"""What a newcomer meets first: a mistyped flag or command, a --data that is not a
file, a binary --data, and where `parity --report` wrote.

Parser messages are checked in-process through build_parser (no JAX, milliseconds). The rest runs
`rainier` as a user does, one subprocess per case, all started at once in a module fixture (as in
test_cli.py): a FIFO must not hang the CLI, so those cases need a process and a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cli_runner import ROOT, cli_env
from rainier_jax.cli.main import build_parser
from rainier_jax.cli.parser import close_matches
from rainier_jax.config.errors import ConfigError

TIMEOUT_S = 60  # generous for a loaded machine: a case takes about a second (a hung FIFO forever)
PARITY_TIMEOUT_S = 300  # the parity run: ~5 s with the compile cache warm, 20-50 s cold and loaded
BINARY = bytes(range(256)) * 100  # NUL bytes: looks binary; long enough for --seq 16


def _parse_error(*argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        build_parser().parse_args(list(argv))
    return str(info.value)


# --- the parser, in-process ------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (("train", "--stpes", "3"), "train: unrecognized argument --stpes (did you mean --steps?)"),
    (("train", "--stpes=3"), "train: unrecognized argument --stpes (did you mean --steps?)"),
    (("train", "--sed", "1", "--bacth", "4"),
     "train: unrecognized arguments --sed (did you mean --seed?), --bacth (did you mean --batch?)"),
    (("mesh", "show", "trn2-mini-8", "--paralel", "dp=8"),
     "mesh show: unrecognized argument --paralel (did you mean --parallel?)"),
    # a mistyped required flag: argparse would only say that --schedule is missing
    (("schedule", "--shedule", "1f1b", "--pp", "2", "--microbatches", "4"),
     "schedule: unrecognized argument --shedule (did you mean --schedule?)"),
    (("trian",), "invalid choice 'trian' (did you mean train?; choose from mesh, train, parity, estimate, "
                 "plan, launch, run, schedule)"),
    (("mesh", "shwo"), "mesh: invalid choice 'shwo' (did you mean show?; choose from show, list)"),
])
def test_typo_names_the_command_and_suggests(argv, message):
    assert _parse_error(*argv) == message


def test_no_suggestion_when_nothing_is_close():
    msg = _parse_error("train", "--bogus-flag", "1")
    assert msg == "train: unrecognized argument --bogus-flag (see rainier train --help)"
    assert _parse_error("schedule", "--pp", "2") == (
        "schedule: the following arguments are required: --schedule, --microbatches (see rainier schedule --help)")


def test_abbreviations_parse_and_mistyped_ones_get_a_suggestion():
    # argparse takes any unique prefix of a flag; the strict parsers must keep that
    args = build_parser().parse_args(["train", "--step", "3", "--micro=2"])
    assert (args.steps, args.microbatches) == (3, 2)
    assert _parse_error("train", "--mircro", "2") == (
        "train: unrecognized argument --mircro (did you mean --microbatches?)")


def test_close_matches_keeps_near_ties():
    assert close_matches("sede", ["seed", "seq", "steps"]) == ["seed"]
    assert close_matches("zzz", ["seed", "seq"]) == []
    # a mistyped abbreviation of two flags: both are offered
    assert close_matches("checkpont", ["checkpoint-dir", "checkpoint-every", "keep"], prefixes=True) == [
        "checkpoint-dir", "checkpoint-every"]


# --- the CLI, one subprocess per case, all at once ---------------------------------------------

def _inputs(d: Path) -> dict[str, Path]:
    fifo = d / "corpus.fifo"
    os.mkfifo(fifo)
    (d / "with_fifo").mkdir()
    (d / "with_fifo" / "a.txt").write_text("plain text\n" * 100)
    os.mkfifo(d / "with_fifo" / "b.fifo")  # opening it would block the run forever
    (d / "with_fifo" / "c.dat").write_bytes(BINARY)
    (d / "blob.dat").write_bytes(BINARY)
    return {"fifo": fifo, "with_fifo": d / "with_fifo", "blob": d / "blob.dat", "report": d / "report"}


def _run(argv, timeout=TIMEOUT_S, **kw):
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        return e


def _cli(*args: str, timeout=TIMEOUT_S):
    return _run([sys.executable, "-m", "rainier_jax.cli", *args], timeout, env=cli_env(args))


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    p = _inputs(tmp_path_factory.mktemp("usability"))
    # A library call, not the CLI: a directory's FIFO is skipped without being opened, and is not
    # counted among its files.
    # Its notes name settings; spelled as the CLI spells them (cli/flags.py) to compare with the CLI's.
    load_dir = (f"from rainier_jax.train import data; c = data.load_corpus({str(p['with_fifo'])!r}, 256, 16); "
                "from rainier_jax.config.errors import spell; "
                "print(c.num_files, c.num_bytes); print(*(spell(n, {'data': '--data'}) for n in c.notes))")
    cases = {
        "typo": lambda: _cli("train", "--stpes", "3"),
        "command-typo": lambda: _cli("mesh", "shwo"),
        "dev-zero": lambda: _cli("train", "--data", "/dev/zero"),
        "fifo": lambda: _cli("parity", "--parallel", "dp=8", "--data", str(p["fifo"])),
        "dir-with-fifo": lambda: _run([sys.executable, "-c", load_dir], env=cli_env(["-c"])),
        "parity-report": lambda: _cli("parity", "--parallel", "dp=8", "--steps", "1", "--batch", "8",
                                      "--seq", "16", "--data", str(p["blob"]), "--report", str(p["report"]),
                                      timeout=PARITY_TIMEOUT_S),
    }
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(cases), os.cpu_count() or 1)))
    request.addfinalizer(lambda: pool.shutdown(wait=True, cancel_futures=True))
    # The slow one first, so the quick ones share the other worker.
    order = ["parity-report"] + [k for k in cases if k != "parity-report"]
    return p, {k: pool.submit(cases[k]) for k in order}


def _result(runs, key) -> subprocess.CompletedProcess:
    proc = runs[1][key].result()
    assert not isinstance(proc, subprocess.TimeoutExpired), f"{key}: no answer within {proc.timeout} s"
    return proc


@pytest.mark.parametrize("key, line", [
    ("typo", "rainier: error: train: unrecognized argument --stpes (did you mean --steps?)"),
    ("command-typo", "rainier: error: mesh: invalid choice 'shwo' (did you mean show?; choose from show, list)"),
])
def test_cli_error_line_has_one_prefix(runs, key, line):
    proc = _result(runs, key)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, line + "\n", "")


@pytest.mark.parametrize("key, what", [("dev-zero", "/dev/zero: is a character device"),
                                       ("fifo", "corpus.fifo: is a named pipe (FIFO)")])
def test_data_that_is_no_file_is_one_line_exit_2(runs, key, what):
    proc = _result(runs, key)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and proc.stdout == "", proc.stderr
    assert lines[0].startswith("rainier: error: --data ") and what in lines[0], lines[0]


def test_directory_skips_fifo_unopened_and_notes_binary_files(runs):
    proc = _result(runs, "dir-with-fifo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"2 {len('plain text') * 100 + 100 + len(BINARY)}",
        f"note: --data {runs[0]['with_fifo']}: 1 of 2 files looks binary (first: c.dat, NUL bytes in its first "
        "64 KiB); training on their raw bytes"]


def test_parity_report_says_what_it_wrote_and_notes_binary_data(runs):
    p = runs[0]
    proc = _result(runs, "parity-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = p["report"]
    wrote = f"wrote {d}/report.json, {d}/loss_diff.png, {d}/grad_error_by_layer.png"
    # on stderr: stdout is the same wherever --report points (test_parity.py compares two runs')
    assert proc.stderr.splitlines()[-1] == wrote, proc.stderr[-2000:]
    assert "verdict: PASS" in proc.stdout and "wrote" not in proc.stdout
    assert all((d / name).is_file() for name in ("report.json", "loss_diff.png", "grad_error_by_layer.png"))
    note = (f"note: --data {p['blob']}: looks binary (NUL bytes in its first 64 KiB); training on its raw "
            "bytes (a file of uint16 tokens must be named *.bin)")
    assert proc.stderr.splitlines().count(note) == 1, proc.stderr[-3000:]
