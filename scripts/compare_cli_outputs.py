"""Check that the `rainier` CLI still says the same things after a refactor.

The restructure into subpackages must leave "the CLI's outputs on the README examples identical
to main's once wall-clock figures are masked". This script runs a fixed list of CLI invocations —
every example in README.md (train shortened to 20 steps, launch to 10, to save time), the
`schedule` examples of docs/PIPELINE.md, `--help`, and the bad-input cases users see (exit 2) —
against one checkout, masks what varies from run to run of the same code, and compares two such
captures:

    python scripts/compare_cli_outputs.py capture OUTDIR [--code DIR]   # DIR: a checkout [this one]
    python scripts/compare_cli_outputs.py diff DIR_A DIR_B               # exit 1 if any differs

Each command runs as a subprocess with PYTHONPATH=DIR and CI=1 (otherwise this environment), in a
fresh temporary working directory, so relative outputs (run.jsonl, parity/, t.json) land there.
The entry point is read from DIR/pyproject.toml `[project.scripts] rainier`, as the installed
`rainier` script would, so it follows the function if a restructure moves it. Per command, OUTDIR
gets NAME.out, NAME.err (masked stdout/stderr), NAME.rc (exit code) and NAME.files (the files the
command left in its working directory: JSON/JSONL text, masked, others by size and sha256).
Capture takes about 3–4 minutes on 2 idle cores (train ~55 s, parity ~35 s, launch ~75 s, plan ~20 s).

Masked — what differed between two captures of the same code, and nothing else: wall-clock times
and rates (tok/s, "median N tokens/s", "eta N s", "compiled in / compile / total / swept in X s",
run.jsonl's tokens_per_s), the per-run working directory (`<cwd>`), and for launch the
coordinator's free port, the process ids and the order in which the processes' lines interleave
(lines are grouped by their [pK] prefix). Losses, gradient norms, parity errors, byte counts,
estimates and the report/trace/PNG files are deterministic and compared exactly.
"""

import argparse
import difflib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600

EST = ["estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver", "--nodes", "4",
       "--parallel", "tp=16,pp=4,dp=16", "--zero1", "--batch", "256", "--microbatches", "16", "--seq", "8192"]
L3 = "dp=2,fsdp=2,tp=2"

# (name, argv, directories to create in the working directory first)
COMMANDS: list[tuple[str, list[str], list[str]]] = [
    # README.md examples; train runs 20 steps (README: 100) and evaluates every 10, to save time.
    ("train", ["train", "--parallel", L3, "--steps", "20", "--eval-every", "10", "--metrics", "run.jsonl"], []),
    ("parity", ["parity", "--parallel", L3, "--report", "parity/"], []),
    ("launch", ["launch", "--processes", "2", "--", "train", "--parallel", "dp=2,tp=2,pp=2",
                "--microbatches", "2", "--steps", "10"], []),
    ("estimate", EST, []),
    ("estimate-json", EST + ["--json"], []),
    ("plan", ["plan", "--model", "llama-3.1-70b", "--mesh", "trn2-instance", "--nodes", "32",
              "--batch", "1024", "--seq", "8192"], []),
    ("mesh-show", ["mesh", "show", "trn2-mini-8", "--parallel", L3], []),
    ("mesh-list", ["mesh", "list"], []),
    # docs/PIPELINE.md
    ("schedule-interleaved", ["schedule", "--schedule", "interleaved", "--pp", "4", "--microbatches", "8",
                              "--virtual-stages", "2", "--trace", "t.json", "--png", "t.png"], []),
    ("schedule-1f1b", ["schedule", "--schedule", "1f1b", "--pp", "4", "--microbatches", "8"], []),
    ("help", ["--help"], []),
    ("train-help", ["train", "--help"], []),
    # bad input: one line on stderr, exit 2
    ("bad-dp3", ["train", "--parallel", "dp=3"], []),
    ("bad-tp16", ["train", "--parallel", "tp=16"], []),
    ("bad-batch7", ["train", "--batch", "7", "--parallel", L3], []),
    ("bad-microbatches0", ["train", "--microbatches", "0"], []),
    ("bad-schedule-pp2", ["train", "--parallel", "pp=2", "--schedule", "bogus"], []),
    ("bad-schedule", ["train", "--parallel", "pp=2,dp=4", "--schedule", "bogus"], []),
    ("bad-mesh", ["train", "--mesh", "nope"], []),
    ("bad-model", ["train", "--model", "nope"], []),
    ("bad-estimate-tp3", ["estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-instance",
                          "--batch", "256", "--parallel", "tp=3"], []),
    ("bad-estimate-ranks", ["estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver", "--nodes",
                            "1000", "--batch", "1024", "--parallel", "dp=256000"], []),
    ("bad-plan-ranks", ["plan", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver", "--nodes", "128",
                        "--batch", "1024"], []),
    ("bad-resume-no-dir", ["train", "--resume"], []),
    ("bad-resume-empty-dir", ["train", "--checkpoint-dir", "ck", "--resume"], ["ck"]),
    ("bad-parity-no-layout", ["parity", "--reference", "dp=3"], []),
    ("bad-parity-reference", ["parity", "--parallel", "dp=8", "--reference", "dp=3"], []),
    ("bad-steps0", ["train", "--steps", "0"], []),
    ("bad-steps-int32", ["train", "--steps", "2147483648"], []),
    ("bad-lr-nan", ["train", "--lr", "nan"], []),
    ("bad-batch-seq", ["train", "--batch", "100000", "--seq", "100000"], []),
    ("bad-schedule-pp0", ["schedule", "--schedule", "1f1b", "--pp", "0", "--microbatches", "4"], []),
    ("bad-data-missing", ["train", "--data", "/nonexistent"], []),
    ("bad-data-device", ["train", "--data", "/dev/zero"], []),
    ("bad-flag-typo", ["train", "--stpes", "3"], []),
    ("bad-command-typo", ["mesh", "shwo"], []),
    ("bad-command", ["serve"], []),
]

# Wall-clock figures: (pattern, replacement), applied in order to stdout and stderr.
MASKS = [
    (re.compile(r"[\d,]+(\.\d+)? tok/s"), "<N> tok/s"),
    (re.compile(r"median [\d,]+(\.\d+)? tokens/s"), "median <N> tokens/s"),
    (re.compile(r"\beta \d+(\.\d+)? s\b"), "eta <T> s"),
    (re.compile(r"\b(compiled in|compile|total|in) \d+(\.\d+)? s\b"), r"\1 <T> s"),
    (re.compile(r'"tokens_per_s": [\d.e+-]+'), '"tokens_per_s": <N>'),   # run.jsonl
    # launch: the coordinator's free port and the processes' ids
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\(pids [\d, ]+\)"), "(pids <pids>)"),
]


def entry_point(code: Path) -> str:
    """`module:function` of the `rainier` script in CODE's pyproject.toml."""
    with open(code / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]["rainier"]


def runner(code: Path) -> str:
    """`python -c` program that runs the entry point on sys.argv[1:], as the installed script does."""
    module, func = entry_point(code).split(":")
    return (f"import sys, importlib; f = importlib.import_module({module!r}).{func}; "
            f"sys.argv = ['rainier', *sys.argv[1:]]; sys.exit(f())")


PROCESS = re.compile(r"\[p(\d+)\] ")


def by_process(text: str) -> str:
    """launch interleaves its processes' lines as they arrive, in an order that varies from run to
    run: group them by their `[pK] ` prefix (stable, so each process's own order is kept; the
    launcher's unprefixed lines go first)."""
    def key(line: str) -> int:
        m = PROCESS.match(line)
        return int(m.group(1)) if m else -1
    return "".join(sorted(text.splitlines(keepends=True), key=key))


def mask(text: str, cwd: str) -> str:
    for path in sorted({cwd, os.path.realpath(cwd)}, key=len, reverse=True):
        text = text.replace(path, "<cwd>")
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return by_process(text) if PROCESS.match(text) else text


def describe(path: Path, cwd: str) -> str:
    """A file the command wrote: its text if JSON (masked later), else its size and sha256."""
    rel, data = path.relative_to(cwd), path.read_bytes()
    if path.suffix in (".json", ".jsonl"):
        return f"=== {rel}\n" + data.decode() + ("" if data.endswith(b"\n") else "\n")
    return f"=== {rel}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}\n"


def check_shadowing(code: Path, env: dict) -> None:
    """Stop unless `import rainier_jax` resolves inside CODE (not the editable install)."""
    out = subprocess.run([sys.executable, "-c", "import rainier_jax; print(rainier_jax.__file__)"],
                         env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    where = Path(out.stdout.strip()).resolve()
    print(f"code: {where}; entry point {entry_point(code)}")
    if out.returncode or not where.is_relative_to(code.resolve()):
        sys.exit(f"rainier_jax does not come from {code}: {out.stdout}{out.stderr}")


def capture(outdir: Path, code: Path) -> int:
    outdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(code), CI="1")
    check_shadowing(code, env)
    prog, start = runner(code), time.monotonic()
    for name, argv, dirs in COMMANDS:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rainier-cli-") as cwd:
            for d in dirs:
                Path(cwd, d).mkdir()
            try:
                p = subprocess.run([sys.executable, "-c", prog, *argv], cwd=cwd, env=env,
                                   capture_output=True, text=True, timeout=TIMEOUT_S)
                out, err, rc = p.stdout, p.stderr, str(p.returncode)
            except subprocess.TimeoutExpired as e:
                out, err, rc = str(e.stdout or ""), str(e.stderr or ""), "timeout"
            files = "".join(describe(f, cwd) for f in sorted(Path(cwd).rglob("*")) if f.is_file())
            (outdir / f"{name}.out").write_text(mask(out, cwd))
            (outdir / f"{name}.err").write_text(mask(err, cwd))
            (outdir / f"{name}.rc").write_text(rc + "\n")
            (outdir / f"{name}.files").write_text(mask(files, cwd))
        print(f"{name:24s} exit {rc:>7s}  {time.monotonic() - t0:6.1f} s", flush=True)
    print(f"captured {len(COMMANDS)} commands into {outdir} in {time.monotonic() - start:.0f} s")
    return 0


def diff(a: Path, b: Path) -> int:
    """Print a unified diff for each command whose capture differs; 1 if any does."""
    files = sorted({p.name for d in (a, b) for p in d.iterdir() if p.is_file()})
    commands = sorted({f.rsplit(".", 1)[0] for f in files})
    differing = []
    for command in commands:
        lines = []
        for f in (f for f in files if f.rsplit(".", 1)[0] == command):
            missing = [str(d / f) for d in (a, b) if not (d / f).exists()]
            if missing:
                lines.append(f"missing: {missing[0]}")
                continue
            ta, tb = ((d / f).read_text() for d in (a, b))
            if ta != tb:
                lines += difflib.unified_diff(ta.splitlines(), tb.splitlines(), str(a / f), str(b / f),
                                              lineterm="")
        if lines:
            differing.append(command)
            print(f"### {command}", *lines, "", sep="\n")
    print(f"{len(differing)} of {len(commands)} commands differ" + (f": {' '.join(differing)}" if differing else ""))
    return 1 if differing else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture", help="run the command list, write masked outputs to OUTDIR")
    c.add_argument("outdir", type=Path)
    c.add_argument("--code", type=Path, default=REPO, help="checkout to run [this repository]")
    d = sub.add_parser("diff", help="unified diff of two captures; exit 1 if any differs")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "capture":
        return capture(args.outdir, args.code.resolve())
    return diff(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
