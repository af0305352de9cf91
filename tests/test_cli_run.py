"""`rainier run SCRIPT`: a user's own script on an emulated mesh (rainier_jax/cli/run.py).

The runs are subprocesses started together by one fixture (most of each is Python and JAX
starting up, which overlaps); bad input is refused before any script starts, so those cases call
the command line in this process.
"""

import re
import subprocess
import time

import pytest

from cli_runner import ROOT, cli_env, command
from rainier_jax.cli.main import main

EXAMPLE = "scripts/own_script.py"
TIMEOUT_S = 240

ARGV_SCRIPT = """
import os, sys
import helper   # beside the script: its folder is first on sys.path
print("NAME", __name__)
print("ARGV", sys.argv[1:])
print("PATH0", sys.path[0])
print("ENV", os.environ.get("RAINIER_MESH"), os.environ.get("RAINIER_PARALLEL"), os.environ.get("RAINIER_LNC"))
sys.exit(int(sys.argv[1]))
"""

BOOM_SCRIPT = """
def inner():
    raise ValueError("boom from the user's own code")

inner()
"""

# Process 1 fails; process 0 would wait far longer than the test does.
FAIL_SCRIPT = """
import os, sys, time
if os.environ["JAX_PROCESS_ID"] == "1":
    print("process 1 gives up", flush=True)
    sys.exit(3)
time.sleep(60)
"""


def start(args, cwd=ROOT, cache=True):
    """`rainier ARGS` in the background. `cache=False` for several processes: JAX's compile cache
    writes are not atomic (cli_runner.py)."""
    env = cli_env(args if cache else ["launch"])
    return subprocess.Popen(command(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    (d / "sub").mkdir()
    (d / "sub" / "argv_check.py").write_text(ARGV_SCRIPT)
    (d / "sub" / "helper.py").write_text("")
    (d / "boom.py").write_text(BOOM_SCRIPT)
    (d / "fail.py").write_text(FAIL_SCRIPT)
    (d / "my-mesh.toml").write_text((ROOT / "meshes" / "trn2-mini-8.toml").read_text())
    started = {
        "one": start(["run", EXAMPLE, "--parallel", "dp=2,fsdp=2,tp=2", "--", "--steps", "10"]),
        "two": start(["run", EXAMPLE, "--processes", "2", "--parallel", "fsdp=4,tp=2", "--", "--steps", "10"],
                     cache=False),
        # A relative script path, from another working directory; arguments that look like flags.
        "argv": start(["run", "sub/argv_check.py", "--mesh", "my-mesh.toml", "--parallel", "pp=2,dp=4",
                       "--script-uses-pp", "--", "3", "--mesh", "x", "-b"], cwd=d),
        "boom": start(["run", str(d / "boom.py")]),
        "fail": start(["run", str(d / "fail.py"), "--processes", "2"], cache=False),
    }
    t0 = time.monotonic()
    done = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=TIMEOUT_S)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done["fail_seconds"] = time.monotonic() - t0
    return d, done


def losses(stdout: str, prefix: str = "") -> list[float]:
    return [float(x) for x in re.findall(rf"^{re.escape(prefix)}step +\d+  loss (\d+\.\d+)$", stdout, re.M)]


def test_the_example_trains_and_its_loss_falls(runs):
    _, r = runs
    one = r["one"]
    assert one.returncode == 0, one.stderr[-3000:]
    # rj.emulate() without arguments took the command line's layout.
    assert "Emulation(trn2-mini-8: 8 ranks, LNC=2, layout dp=2,fsdp=2,tp=2)" in one.stdout
    assert "embedding table sharded as P('tp', 'fsdp')" in one.stdout
    got = losses(one.stdout)
    assert len(got) == 3 and got[-1] < got[0] / 10, one.stdout


def test_the_example_runs_as_two_processes(runs):
    _, r = runs
    two = r["two"]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Emulation(trn2-mini-8: 8 ranks, LNC=2, layout fsdp=4,tp=2, 2 processes)" in two.stdout
    assert re.search(r"^rainier run: 2 processes on 127\.0\.0\.1:\d+ \(pids \d+, \d+\): scripts/own_script.py "
                     r"--steps 10$", two.stderr, re.M), two.stderr
    got = losses(two.stdout, "[p0] ")
    assert len(got) == 3 and got[-1] < got[0] / 10, two.stdout
    assert "[p1]" not in two.stdout   # only process 0 prints
    assert got == pytest.approx(losses(r["one"].stdout), abs=2e-3)   # another layout, the same model


def test_the_script_runs_as_python_would_run_it(runs):
    d, r = runs
    argv = r["argv"]
    assert argv.returncode == 3, argv.stderr   # the script's own exit code
    assert "NAME __main__" in argv.stdout
    assert "ARGV ['3', '--mesh', 'x', '-b']" in argv.stdout
    assert f"PATH0 {d / 'sub'}" in argv.stdout
    # A mesh file is passed as an absolute path; the flags given, and only those.
    assert f"ENV {d / 'my-mesh.toml'} pp=2,dp=4 None" in argv.stdout
    assert argv.stderr == ""


def test_a_traceback_from_the_users_code_is_shown_as_python_shows_it(runs):
    d, r = runs
    boom = r["boom"]
    assert boom.returncode == 1
    assert boom.stderr.startswith("Traceback (most recent call last):\n")
    assert f'File "{d / "boom.py"}", line 3, in inner' in boom.stderr
    assert boom.stderr.endswith("ValueError: boom from the user's own code\n")


def test_a_failed_process_ends_the_others_as_rainier_launch_does(runs):
    _, r = runs
    fail = r["fail"]
    assert fail.returncode == 3, fail.stderr
    assert "[p1] process 1 gives up" in fail.stdout
    assert re.search(r"^rainier run: process 1 failed first \(exited with code 3\); process 0 ended on the "
                     r"launcher's SIGTERM$", fail.stderr, re.M), fail.stderr
    assert r["fail_seconds"] < 60


@pytest.mark.parametrize("args,needle", [
    (["nope.py"], "run: nope.py: no such file"),
    (["scripts"], "run: scripts: not a file"),
    ([EXAMPLE, "--mesh", "nope"], "--mesh nope: unknown mesh name"),
    ([EXAMPLE, "--lnc", "3"], "--lnc 3: trn2-mini-8 supports only --lnc 2"),
    ([EXAMPLE, "--parallel", "dp=3"], "--parallel dp=3: the axis sizes multiply to 3 but the mesh has 8 ranks"),
    ([EXAMPLE, "--parallel", "pp=2,dp=4"], "--parallel pp=2,dp=4: pp=2, but rainier does not pipeline a script's "
                                           "own code; use pp=1, or pass --script-uses-pp"),
    ([EXAMPLE, "--processes", "3"], "--processes 3: 3 processes cannot each own whole instances of trn2-mini-8"),
    ([EXAMPLE, "--port", "5000"], "--port 5000: needs --processes N"),
    ([EXAMPLE, "--mesh"], "run: argument --mesh: expected one argument"),
    ([], "run: the following arguments are required: SCRIPT.py"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, args, needle):
    monkeypatch.chdir(ROOT)
    assert main(["run", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"rainier: error: {needle}"), err


def test_the_run_command_is_in_rainiers_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert re.search(r"^\s+run\s+run your own Python script", out, re.M), out
