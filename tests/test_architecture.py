"""The shape of the package, checked: the import rules of docs/DESIGN.md, JAX only where it belongs,
and comments that cite only what exists.

The import checks read the source with `ast` (nothing is imported), over every module under
rainier_jax/. An import inside a function counts: it is as much a dependency as one at the top,
it only happens later. An import under `if TYPE_CHECKING:` is never executed: it counts for the
layers (a type named is a dependency of the design) but not for JAX or cycles.

Three checks start a fresh interpreter, since the pytest process has imported JAX long before:
the JAX-free modules import without `jax`, `rainier estimate` and `rainier plan` never import it,
and `rainier train` refuses bad input (exit 2) before it does.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "rainier_jax"

# The layers, bottom up: the modules each holds (prefixes under rainier_jax; a module belongs to
# the layer with the longest matching prefix), the layers it may import, and whether it may import
# JAX (jax, jaxlib, flax, optax, orbax). Imports within a layer are allowed; cycles are checked
# apart. docs/DESIGN.md shows this same table.
LAYER_TABLE = """
layer     modules                                may import                                     jax
config    config                                 -                                              no
hardware  hardware                               config                                         no
spec      spec                                   config hardware                                no
plan      parallel                               config hardware spec                           no
model     model                                  config spec                                    yes
shard     parallel.sharding parallel.pipeline    config hardware spec plan model                yes
dist      dist                                   config                                         yes
train     train                                  config hardware spec plan model shard dist     yes
parity    parity                                 config hardware spec plan model shard dist     yes
                                                 train
perf      perf                                   config hardware spec plan                      no
compiled  perf.compiled                          config hardware spec plan model shard dist     yes
                                                 train perf
api       api                                    config hardware spec plan model shard dist     yes
                                                 train
cli       cli                                    *                                              yes
"""
# Not in the table: the package root, rainier_jax/__init__.py, which no module may import.

JAX_PACKAGES = {"jax", "jaxlib", "flax", "optax", "orbax"}
# The one place a JAX-free module may import JAX, inside one function: the experiment is built and
# validated without JAX, and its mesh is made only when a command that runs JAX asks for it.
LAZY_JAX = {("rainier_jax.parallel.experiment", "mesh_of")}


@dataclass(frozen=True)
class Layer:
    name: str
    prefixes: tuple[str, ...]
    may_import: frozenset[str]
    jax: bool


def parse_table(text: str) -> dict[str, Layer]:
    """The table's rows (a line that starts with spaces continues the row above's "may import")."""
    rows: list[list[str]] = []
    lines = text.strip().splitlines()[1:]
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip())
        if line.startswith(" "):
            rows[-1][2] += " " + cells[0]
        else:
            rows.append(cells)
    names = [r[0] for r in rows]
    layers = {}
    for name, modules, may, jax in rows:
        allowed = set(names) if may == "*" else set() if may == "-" else set(may.split())
        layers[name] = Layer(name, tuple(modules.split()), frozenset(allowed - {name}), jax == "yes")
    return layers


LAYERS = parse_table(LAYER_TABLE)


# ---- reading the source ------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    module: str        # the importing module, "rainier_jax.perf.estimate"
    line: int
    target: str        # the imported project module, or an outside package's top-level name
    function: str      # the enclosing function ("" at module level), "Experiment.mesh"
    type_only: bool    # under `if TYPE_CHECKING:`
    from_root: bool    # `import rainier_jax` or `from rainier_jax import …`

    def __str__(self) -> str:
        return f"{relpath(self.module)}:{self.line} imports {self.target}"


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def relpath(module: str) -> str:
    return str(modules()[module].relative_to(ROOT))


def layer_of(module: str) -> Layer | None:
    """The layer holding `module` (None for the package root or a module in no layer)."""
    name = module.removeprefix("rainier_jax.")
    best, length = None, -1
    for layer in LAYERS.values():
        for prefix in layer.prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > length:
                best, length = layer, len(prefix)
    return best


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The dotted module a `from … import` reads from, relative imports made absolute."""
    if not node.level:
        return node.module or ""
    is_package = modules()[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports() -> tuple[Import, ...]:
    """Every import statement of the package, at any depth."""
    known = modules()
    found: list[Import] = []

    def from_root(module: str, node: ast.stmt) -> bool:
        if isinstance(node, ast.Import):
            return any(a.name == "rainier_jax" for a in node.names)
        return _resolve(module, node) == "rainier_jax"

    def targets(module: str, node: ast.stmt) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        source = _resolve(module, node)
        # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod.
        return [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]

    def walk(module: str, body: list[ast.stmt], function: str, type_only: bool) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in dict.fromkeys(targets(module, node)):
                    if not target.startswith("rainier_jax") or target not in known:
                        target = target.split(".")[0]
                    found.append(Import(module, node.lineno, target, function, type_only, from_root(module, node)))
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                walk(module, node.body, f"{function}.{node.name}".lstrip("."), type_only)
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                walk(module, node.body, function, True)
                walk(module, node.orelse, function, type_only)
                continue
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    walk(module, [n for n in inner if isinstance(n, ast.AST)], function, type_only)

    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        walk(module, tree.body, "", False)
    return tuple(found)


def project_imports() -> list[Import]:
    return [i for i in imports() if i.target.startswith("rainier_jax")]


def failures(title: str, lines: list[str]) -> str:
    return f"{title}:\n  " + "\n  ".join(lines)


# ---- the import rules ---------------------------------------------------------------------------

def test_every_module_is_in_a_layer():
    lost = [relpath(m) for m in modules() if m != "rainier_jax" and layer_of(m) is None]
    assert not lost, failures("modules in no layer of LAYER_TABLE", lost)


def test_jax_free_layers_only_import_jax_free_layers():
    # A property of the table itself: otherwise a JAX-free module could reach JAX through another.
    bad = [f"{l.name} may import {o}" for l in LAYERS.values() if not l.jax
           for o in sorted(l.may_import) if LAYERS[o].jax]
    assert not bad, failures("LAYER_TABLE lets a JAX-free layer import a JAX layer", bad)


def test_imports_follow_the_layers():
    bad = []
    for imp in project_imports():
        if imp.from_root:
            continue   # test_no_module_imports_the_package_root
        here, there = layer_of(imp.module), layer_of(imp.target)
        if here is None or there is None or here is there:
            continue
        if there.name not in here.may_import:
            bad.append(f"{imp}  ({here.name} → {there.name})")
    assert not bad, failures("imports against LAYER_TABLE", bad)


def test_jax_free_layers_import_no_jax():
    bad = [f"{imp} in {imp.function or 'the module body'}" for imp in imports()
           if imp.target in JAX_PACKAGES and not imp.type_only
           and (layer := layer_of(imp.module)) is not None and not layer.jax
           and (imp.module, imp.function) not in LAZY_JAX]
    assert not bad, failures("JAX imported by a JAX-free module", bad)


def test_nothing_imports_the_cli():
    bad = [str(i) for i in project_imports() if (i.target == "rainier_jax.cli" or i.target.startswith("rainier_jax.cli."))
           and not (i.module == "rainier_jax.cli" or i.module.startswith("rainier_jax.cli."))]
    assert not bad, failures("library modules that import the CLI", bad)


def test_no_module_imports_the_package_root():
    # rainier_jax/__init__.py is the public API for users' scripts; a library module that reads
    # from it would depend on everything the API gathers, and make import order matter.
    bad = [str(i) for i in project_imports() if i.from_root]
    assert not bad, failures("modules that import the package root (`from rainier_jax import …`)", bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    runtime = [i for i in project_imports() if not i.type_only and i.target != i.module]
    edges: dict[str, set[str]] = {}
    for imp in runtime:
        edges.setdefault(imp.module, set()).add(imp.target)
    found = []
    for component in cycles(edges):
        inside = [f"{imp}" + (f" (in {imp.function})" if imp.function else "")
                  for imp in runtime if imp.module in component and imp.target in component]
        found.append(" ↔ ".join(m.removeprefix("rainier_jax.") for m in component) + ":\n    "
                     + "\n    ".join(inside))
    assert not found, failures("import cycles", found)


def test_design_md_shows_the_layer_table():
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert LAYER_TABLE.strip() in design, "docs/DESIGN.md must show LAYER_TABLE exactly as this test has it"


# ---- no JAX where none is needed (fresh interpreters) ------------------------------------------

# Run first in the child: notes where JAX is first imported from, then lets the import go on.
WATCH = r"""
import json, sys, traceback
class _Watch:
    first = None
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("jax", "jaxlib") and _Watch.first is None:
            _Watch.first = [f"{f.filename.rpartition('/rainier_jax/')[2]}:{f.lineno}"
                            for f in traceback.extract_stack() if "/rainier_jax/" in f.filename]
        return None
sys.meta_path.insert(0, _Watch())
def _report(**more):
    print("WATCH " + json.dumps({"jax": sorted({"jax", "jaxlib"} & set(sys.modules)),
                                 "first": _Watch.first, **more}))
"""


def start_watched(body: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WATCH + body], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("WATCH ")]
    assert lines, f"the child printed no report (exit {proc.returncode}):\n{err[-3000:]}"
    return {**json.loads(lines[-1][len("WATCH "):]), "stderr": err}


def jax_free_modules() -> list[str]:
    return [m for m in modules() if (layer := layer_of(m)) is not None and not layer.jax]


def where(report: dict) -> str:
    chain = " → ".join(report["first"] or [])
    return f"{', '.join(report['jax'])} imported (first from rainier_jax/{chain})"


ANALYTIC = {
    "estimate": ["estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver", "--nodes", "4",
                 "--parallel", "tp=16,pp=4,dp=16", "--zero1", "--batch", "256", "--microbatches", "16",
                 "--seq", "8192"],
    "estimate-json": ["estimate", "--model", "tiny", "--mesh", "trn2-mini-8", "--parallel", "dp=2,fsdp=2,tp=2",
                      "--batch", "32", "--json"],
    "plan": ["plan", "--model", "tiny", "--mesh", "trn2-mini-8", "--batch", "32", "--seq", "128"],
}
# "No JAX before validation": each is refused with one line and exit code 2 before JAX starts.
REFUSED = {
    "microbatches-0": ["train", "--microbatches", "0"],
    "layout-not-the-rank-count": ["train", "--parallel", "dp=3"],
    "layout-does-not-fit-in-memory": ["train", "--model", "llama-3.1-8b", "--parallel", "fsdp=8"],
}


@cache
def reports() -> dict[str, dict]:
    """One fresh interpreter per case, all started at once (each takes a second, mostly Python's
    own start)."""
    import_all = ("import importlib\n"
                  f"for name in {jax_free_modules()!r}:\n    importlib.import_module(name)\n"
                  "_report()\n")
    bodies = {"import": import_all} | {
        name: f"from rainier_jax.cli.main import main\ncode = main({argv!r})\n_report(code=code)\n"
        for name, argv in (ANALYTIC | REFUSED).items()}
    started = {name: start_watched(body) for name, body in bodies.items()}
    return {name: finish(proc) for name, proc in started.items()}


def test_jax_free_modules_import_without_jax():
    assert {"rainier_jax.perf.estimate", "rainier_jax.parallel.layout"} <= set(jax_free_modules())
    report = reports()["import"]
    assert not report["jax"], where(report)


@pytest.mark.parametrize("name", ANALYTIC)
def test_analytic_commands_never_import_jax(name):
    report = reports()[name]
    assert report["code"] == 0, report["stderr"][-2000:]
    assert not report["jax"], where(report)


@pytest.mark.parametrize("name", REFUSED)
def test_bad_train_input_exits_2_before_jax(name):
    report = reports()[name]
    assert report["code"] == 2, report["stderr"][-2000:]
    assert report["stderr"].count("\n") == 1, report["stderr"]
    assert not report["jax"], where(report)


# ---- comments cite what exists ------------------------------------------------------------------

def scanned_files() -> list[Path]:
    files = [*PKG.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "scripts").glob("*.py"),
             *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    return sorted(f for f in files if f.is_file())


@cache
def prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what a reader reads as prose: a Python file's comments and docstrings, all
    of a Markdown file."""
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return list(enumerate(source.splitlines(), 1))
    out = [(tok.start[0], tok.string.lstrip("#")) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
           if tok.type == tokenize.COMMENT]
    statements = [ast.parse(source)]   # docstrings are statements: expressions are not searched
    while statements:
        node = statements.pop()
        statements += [c for c in ast.iter_child_nodes(node) if isinstance(c, (ast.stmt, ast.excepthandler))]
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out += [(first.lineno + i, text) for i, text in enumerate(first.value.value.splitlines())]
    return out


PROJECT_DIRS = ("rainier_jax", "tests", "scripts", "docs", "meshes", "models")
SUBPACKAGES = tuple(sorted({p.parent.name for p in PKG.rglob("*/__init__.py")}))
URL = re.compile(r"\w+://\S+")
FILE_SUFFIXES = ("py", "md", "toml", "json", "jsonl", "csv", "png", "txt", "bin", "html", "yaml", "yml")
# A path into the project: one that starts at a top-level folder (`docs/PERFMODEL.md`,
# `meshes/*.toml`, `tests/golden/`), or a file path that starts at a subpackage (`perf/traffic.py`,
# read under rainier_jax/). A Markdown link may also go up from its page (`../README.md`).
PATH = re.compile(r"(?<![\w./~-])(?:\.\./)*(?:" + "|".join(PROJECT_DIRS) + r")/[\w.*/-]*[\w*]"
                  r"|(?<![\w./~-])(?:" + "|".join(SUBPACKAGES) + r")/(?:[\w-]+/)*[\w*-]+\.(?:"
                  + "|".join(FILE_SUFFIXES) + r")\b")
# The installed package holds the top-level meshes/ and models/ as these (pyproject.toml).
INSTALLED = {"rainier_jax/meshes": "meshes", "rainier_jax/models": "models"}
# A bare file name: it names a file in the same folder, or at the top of the repository, or, in a
# Markdown tree listing, in the folder that starts its row (a line such as `  perf/   ` and then
# module names; a more indented line without a folder continues the row above).
BARE = re.compile(r"(?<![\w./~*-])[\w-]+\.(?:py|md)\b(?!/)")
# Placeholders of the command synopses (`--model FILE.py:FACTORY`, `rainier run SCRIPT.py`), not files.
PLACEHOLDERS = {"FILE.py", "SCRIPT.py"}
TREE_ROW = re.compile(r"(\s*)((?:[\w.-]+/)+)(?:\s|$)")
# A dotted name, module.name. Checked when it starts with a subpackage's name or a former module's
# name (FORMER): the names whose meaning the split into subpackages changed (the module train's
# function train is no name of the package train).
DOTTED = re.compile(r"(?<![\w./-])([a-z_]\w*)\.([A-Za-z_]\w*)")
# Module names from before the package was split into subpackages (each now lives in one).
FORMER = {"model_config", "run_config", "meshview", "transformer", "resume", "checkpoint_session", "parity_report",
          "perfmodel", "comm", "multihost", "launch", "cli_common", "cli_train", "cli_parity", "cli_estimate"}
ISSUE = re.compile(r"\b(?:issues?|PRs?|pull requests?|tickets?)\s*#?\d+"
                   r"|\(#\d+[),;:]|\b(?:see|fixes|closes|before|after|since|in)\s+#\d+", re.I)


def _exists(cited: str, beside: Path) -> bool:
    # An ALL-CAPS part is a placeholder (`meshes/NAME.toml`): it matches any name.
    pattern = re.sub(r"\b[A-Z][A-Z_]+(?=[./]|$)", "*", cited.rstrip("/"))
    for installed, source in INSTALLED.items():
        if pattern == installed or pattern.startswith(installed + "/"):
            pattern = source + pattern[len(installed):]
    for base in (ROOT, PKG, beside):
        if "*" in pattern:
            if next(iter(base.glob(pattern)), None) is not None:
                return True
        elif (base / pattern).exists():
            return True
    return False


@cache
def defined_names() -> dict[str, set[str]]:
    """For each module or package name (last part): the names its modules define at top level or
    in a class, and a package's modules."""
    out: dict[str, set[str]] = {}
    for module, path in modules().items():
        names = out.setdefault(module.rpartition(".")[2], set())
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in [*tree.body, *(n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body)]:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).partition(".")[0] for a in node.names}
        if path.name == "__init__.py":
            names |= {p.stem for p in path.parent.glob("*.py")} | {p.parent.name for p in path.parent.glob("*/__init__.py")}
    return out


def _qualified_exists(dotted: str) -> bool:
    """A dotted name under rainier_jax: a module, or a name that module defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        if ".".join(parts[:cut]) in modules():
            rest = parts[cut:]
            return not rest or rest[0] in defined_names().get(parts[cut - 1], set())
    return False


def citations(path: Path) -> list[str]:
    """What `path`'s prose cites that is not there."""
    bad = []
    here = path.relative_to(ROOT)
    names = defined_names()
    row: tuple[int, str] | None = None   # (indent, folder) of the Markdown tree row in force
    for line, text in prose(path):
        text = URL.sub("", text)
        if path.suffix == ".md":
            indent = len(text) - len(text.lstrip())
            if m := TREE_ROW.match(text):
                row = (len(m.group(1)), m.group(2))
            elif row is None or indent <= row[0] or not text.strip():
                row = None
        folders = [path.parent, ROOT] + ([ROOT / row[1], PKG / row[1]] if row else [])
        for m in PATH.finditer(text):
            if not _exists(m.group(), path.parent):
                bad.append(f"{here}:{line}: {m.group()} does not exist")
        for m in BARE.finditer(text):
            if m.group() in PLACEHOLDERS:
                continue
            if not any((folder / m.group()).exists() for folder in folders):
                bad.append(f"{here}:{line}: {m.group()} is neither beside {here.name} nor at the top "
                           "(write its path)")
        for m in re.finditer(r"(?<![\w./-])rainier_jax(?:\.\w+)+", text):
            if not _qualified_exists(m.group()):
                bad.append(f"{here}:{line}: {m.group()} names no module or name of the package")
        for m in DOTTED.finditer(text):
            module, name = m.groups()
            if name in FILE_SUFFIXES or module == "rainier_jax":
                continue
            if module in FORMER and module not in names:
                bad.append(f"{here}:{line}: {m.group()}: there is no module {module} any more")
            elif module in SUBPACKAGES and name not in names[module]:
                bad.append(f"{here}:{line}: {m.group()}: no module {module} defines {name}")
    return bad


def test_cited_files_and_names_exist():
    bad = [b for path in scanned_files() for b in citations(path)]
    assert not bad, failures("comments and docs that cite what is not in the project", bad)


def test_no_comment_cites_an_issue_number():
    # The issue tracker is not part of the project: say what was meant instead.
    bad = [f"{path.relative_to(ROOT)}:{line}: {m.group()}" for path in scanned_files()
           for line, text in prose(path) for m in ISSUE.finditer(text)]
    assert not bad, failures("citations of issue numbers", bad)
