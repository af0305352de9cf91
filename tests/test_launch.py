"""`rainier launch`: several real processes on 127.0.0.1 joined by `jax.distributed` (gloo).

Every run is a subprocess bounded in time. The module fixture runs the pipelined layout
pp=2,dp=2,tp=2 (the pipeline crosses the process boundary: pp takes the instances, and each
process owns one) once in one process and once in two, each saving checkpoints, then resumes each
run's checkpoint under the other process count.

Equality is bitwise: every collective group of this layout has two members, and a sum of two
numbers does not depend on the order it is taken in. (Groups of more members are summed in
another order by gloo than by one process's XLA; `test_parity_across_processes` covers such a
layout with the parity harness's derived bounds.)
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runner import ROOT, rainier
from rainier_jax.dist import launcher as launch_lib

PP = ["--parallel", "dp=2,tp=2,pp=2", "--microbatches", "2", "--batch", "16", "--seq", "64", "--steps", "4",
      "--checkpoint-every", "2"]
TIMEOUT_S = 300


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def launch(*args, processes=2, timeout=TIMEOUT_S):
    return rainier("launch", "--processes", str(processes), "--", *args, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("launch")
    one = rainier("train", *PP, "--checkpoint-dir", str(d / "ck1"), "--metrics", str(d / "one.jsonl"),
                  timeout=TIMEOUT_S)
    two = launch("train", *PP, "--checkpoint-dir", str(d / "ck2"), "--metrics", str(d / "two.jsonl"))
    for proc in (one, two):
        assert proc.returncode == 0, proc.stderr[-3000:]
    # Lose each run's last checkpoint, then continue it under the other process count.
    for ck in ("ck1", "ck2"):
        shutil.move(d / ck / "4", d / f"{ck}-4-lost")
    one_from_two = rainier("train", "--checkpoint-dir", str(d / "ck2"), "--resume", "--metrics",
                           str(d / "one_from_two.jsonl"), timeout=TIMEOUT_S)
    two_from_one = launch("train", "--checkpoint-dir", str(d / "ck1"), "--resume", "--metrics",
                          str(d / "two_from_one.jsonl"))
    return d, one, two, one_from_two, two_from_one


def test_two_processes_train_like_one(runs):
    d, one, two, *_ = runs
    assert losses(d / "two.jsonl") == losses(d / "one.jsonl") and len(losses(d / "one.jsonl")) == 4
    # Each process announces its ranks; only process 0 reports.
    assert "[p0] process 0 of 2: ranks 0–3" in two.stdout and "[p1] process 1 of 2: ranks 4–7" in two.stdout
    assert "[p0] steps 1–4" in two.stdout and "[p1] steps" not in two.stdout
    assert "Gloo" not in two.stdout + two.stderr   # gloo's connection notices are dropped


def test_checkpoints_cross_process_counts_both_ways(runs):
    d, one, two, one_from_two, two_from_one = runs
    for proc in (one_from_two, two_from_one):
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in one_from_two.stdout and "resumed from" in two_from_one.stdout
    # Written by two processes, restored in one (and the reverse): steps 3–4 run again identically.
    assert losses(d / "one_from_two.jsonl") == losses(d / "two.jsonl")[2:]
    assert losses(d / "two_from_one.jsonl") == losses(d / "one.jsonl")[2:]
    # The checkpoints two processes wrote are sealed like one process's.
    for ck in ("ck1", "ck2"):
        assert (d / ck / "4" / "MANIFEST.sha256").is_file() and (d / ck / "2" / "MANIFEST.sha256").is_file()


def test_parity_across_processes():
    """The parity harness's derived bounds hold for a 2-process candidate whose tp groups (4 ranks
    inside a process) and dp groups (across) are reduced by gloo."""
    out = launch("parity", "--parallel", "dp=2,tp=4", "--steps", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[p0] verdict: PASS" in out.stdout and "[p1] verdict" not in out.stdout


def test_a_killed_process_ends_the_others():
    """SIGKILL process 0 mid-run (after step 2: progress lines come every 10 % of 20 steps): the
    launcher names it, and the survivor — blocked in a collective with the dead process — ends
    on the launcher's SIGTERM with one line and 128 + 15: not by JAX's abort (at once when the
    coordination service died with process 0, as it did before the launcher hosted it; at the
    heartbeat timeout otherwise), nor by the launcher's SIGKILL. The launcher exits with the
    killed process's code (128 + 9)."""
    killed, survivor = 0, 1
    proc, pids, lines = _launch_until_step(steps=20)
    try:
        os.kill(pids[killed], signal.SIGKILL)
        sent = time.monotonic()
        rest, _ = proc.communicate(timeout=60)
        ended = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert ended < launch_lib.GRACE_S, f"the launcher took {ended:.0f} s: the survivor did not end on its SIGTERM"
    assert proc.returncode == 128 + signal.SIGKILL
    assert f"process {killed} (pid {pids[killed]}) was killed by SIGKILL; ending the other processes" in output
    assert (f"rainier launch: process {killed} failed first (was killed by SIGKILL); process {survivor} ended "
            "on the launcher's SIGTERM") in output, output[-3000:]
    after = rest.splitlines()
    said = [line for line in after if line.startswith(f"[p{survivor}] ")]
    assert said == [f"[p{survivor}] rainier: SIGTERM from rainier launch: process {killed} was killed by SIGKILL; "
                    "ending without saving (the current step cannot finish without that process)"], output[-3000:]
    for noise in ("Traceback", "Check failure", "Fatal Python error", "SIGABRT", "client.h"):
        assert noise not in output, output[-3000:]
    with pytest.raises(ProcessLookupError):   # the survivor is gone too
        os.kill(pids[survivor], 0)


def _launch_until_step(*train_args, steps=60):
    """Start a 2-process launch of `train` and read its output until process 0 reports a step."""
    proc = subprocess.Popen([sys.executable, "-m", "rainier_jax.cli", "launch", "--processes", "2", "--", "train",
                             "--steps", str(steps), "--batch", "16", "--seq", "64", *train_args], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), CI="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, pids, start = [], None, time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("rainier launch: 2 processes"):
            pids = [int(p) for p in line.split("(pids ")[1].split(")")[0].split(", ")]
        if line.startswith("[p0] step ") and pids:
            return proc, pids, lines
        if time.monotonic() - start > TIMEOUT_S:
            proc.kill()
            pytest.fail("no step within the time limit:\n" + "".join(lines[-20:]))
    pytest.fail("the launch ended before its first step:\n" + "".join(lines[-20:]))


def test_sigterm_to_the_launcher_saves_and_exits_0(tmp_path):
    """SIGTERM reaches both processes; they agree on the step to stop after, save it together and
    exit 0 — and the checkpoint they wrote resumes."""
    proc, pids, lines = _launch_until_step("--checkpoint-dir", str(tmp_path / "ck"))
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    stopped = [line for line in output.splitlines() if "stopped by SIGTERM after step" in line]
    assert len(stopped) == 1 and stopped[0].startswith("[p0] "), output[-3000:]
    step = int(stopped[0].split("after step ")[1].split(";")[0])
    assert 6 <= step < 60 and (tmp_path / "ck" / str(step) / "MANIFEST.sha256").is_file()


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


@pytest.mark.parametrize("args,needle", [
    (["--processes", "3", "--", "train"], "--processes 3"),                  # trn2-mini-8 has 2 instances
    (["--processes", "4", "--", "train", "--mesh", "trn2-mini-16"], None),   # fine: checked, then refused below
    (["--processes", "0", "--", "train"], "--processes 0"),
    (["--processes", "2", "--", "estimate"], "cannot launch 'estimate'"),
    (["--processes", "2"], "give the command"),
    (["--processes", "2", "--", "train", "--steps", "0"], "--steps 0"),
    (["--processes", "2", "--", "parity", "--parallel", "dp=3"], "--parallel dp=3"),
    # Checked by launch itself, named as the wrapped command's flags:
    (["--processes", "2", "--", "train", "--mesh", "nope"], "--mesh nope: unknown mesh name"),
    (["--processes", "2", "--", "train", "--lnc", "3"], "--lnc 3: trn2-mini-8 supports only --lnc 2"),
    (["--processes", "2", "--", "train", "--resume", "--checkpoint-dir", "/nonexistent-rainier-dir"],
     "--resume: --checkpoint-dir /nonexistent-rainier-dir does not exist; run without --resume"),
])
def test_bad_launches_are_one_line_and_exit_2(args, needle):
    if needle is None:
        args = ["--processes", "3", "--", "train", "--mesh", "trn2-mini-16"]   # 4 instances: 3 does not divide
        needle = "use 1, 2, 4 processes"
    out = rainier("launch", *args, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("rainier: error:") and needle in out.stderr, out.stderr


def test_a_coordination_service_that_cannot_start_is_one_line_naming_the_flag(monkeypatch, capsys):
    """The launcher (a library: it says `port`) fails to start JAX's coordination service after
    the dry run passed; `rainier launch` says `--port`, in one line, exit 2."""
    from rainier_jax.cli.main import main

    def refuse(port, processes):
        raise RuntimeError("UNAVAILABLE: bind failed")
    monkeypatch.setattr(launch_lib, "_start_service", refuse)
    assert main(["launch", "--processes", "2", "--", "train", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"rainier: error: launch: cannot start JAX's coordination service on 127\.0\.0\.1:\d+ "
                        r"\(UNAVAILABLE: bind failed\); try again, or give another --port\n", err), err


def test_a_busy_port_given_explicitly_is_refused():
    sock, port = _busy_port()
    try:
        out = rainier("launch", "--processes", "2", "--port", str(port), "--", "train", timeout=60)
    finally:
        sock.close()
    assert out.returncode == 2 and out.stderr == (f"rainier: error: --port {port}: already in use on 127.0.0.1; "
                                                  "choose another, or leave --port out to pick a free one\n")


@pytest.mark.parametrize("env,needle", [
    ({"JAX_NUM_PROCESSES": "2"}, "JAX_NUM_PROCESSES is set but JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID are not"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "process id 2"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "HOST:PORT"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two'"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": "0"},
     "3 processes cannot each own whole instances"),
    ({"SLURM_NTASKS": "2"}, "SLURM_PROCID is not"),
])
def test_inconsistent_cluster_variables_are_one_line_and_exit_2(env, needle):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    full.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "rainier_jax.cli", "train", "--steps", "1"], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("rainier: error:") and needle in out.stderr, out.stderr
