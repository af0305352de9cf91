"""Read HLO text: computations, dot FLOPs with loop trip counts, and every collective.

The compiled-program half of the performance model reads what XLA will actually run.
`cost_analysis()` counts a loop body once, so scanned layers would be undercounted by the layer
count; here every computation gets a multiplicity — how often one execution of the entry runs it —
from while-loop trip counts and call sites, and dot FLOPs and collectives are scaled by it.

Replica groups come in three spellings, all handled:
    explicit   replica_groups={{0,1},{2,3}}
    iota       replica_groups=[2,2]<=[4]   or   [4,2]<=[2,4]T(1,0)
    mesh       replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}
An all-reduce whose result is only dynamic-sliced is a reduce-scatter in disguise (the CPU
backend never forms reduce-scatter); it is reported as one.
No JAX here: it parses text.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

from rainier_jax.perf.collectives import KINDS
from rainier_jax.spec.dtypes import HLO_BYTES


@dataclasses.dataclass(frozen=True)
class Shape:
    dtype: str
    dims: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return HLO_BYTES[self.dtype] * math.prod(self.dims)


_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def parse_shapes(text: str) -> list[Shape]:
    """Every array shape in a (possibly tuple) shape string, e.g. `(f32[2,3]{1,0}, bf16[4])`."""
    text = re.sub(r"/\*.*?\*/", "", text)
    return [Shape(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _ARRAY.findall(text)
            if d in HLO_BYTES]


@dataclasses.dataclass
class Instruction:
    name: str
    shapes: list[Shape]
    opcode: str
    operands: list[str]
    args: str        # the text inside the parentheses: operands, or a literal (`parameter(0)`, `constant(8)`)
    attrs: str

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shapes)


@dataclasses.dataclass
class Computation:
    name: str
    instructions: dict[str, Instruction]
    root: str | None


@dataclasses.dataclass
class Module:
    computations: dict[str, Computation]
    entry: str


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    raise ValueError(f"unbalanced brackets in: {text[start:start + 80]}")


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


def _parse_instruction(line: str) -> tuple[Instruction, bool] | None:
    m = _INSTR.match(line)
    if not m:
        return None
    is_root, name, rest = bool(m.group(1)), m.group(2), m.group(3)
    if rest.startswith("("):
        end = _balanced(rest, 0)
    else:
        end = rest.index(" ")
    shape_text, rest = rest[:end], rest[end:].lstrip()
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    close = _balanced(rest, op.end() - 1)
    args = rest[op.end():close - 1]
    return Instruction(name, parse_shapes(shape_text), op.group(1), re.findall(r"%([\w.\-]+)", args), args,
                       rest[close:]), is_root


def parse_module(text: str) -> Module:
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = Computation(m.group(2), {}, None)
                if m.group(1):
                    entry = current.name
            continue
        if line.strip() == "}":
            computations[current.name] = current
            current = None
            continue
        parsed = _parse_instruction(line)
        if parsed:
            instr, is_root = parsed
            current.instructions[instr.name] = instr
            if is_root:
                current.root = instr.name
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return Module(computations, entry)


# --- how often each computation runs ------------------------------------------------------------

def _attr(attrs: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=%?([\w.\-]+)", attrs)
    return m.group(1) if m else None


def trip_count(module: Module, instr: Instruction) -> int:
    """A while loop's trip count: XLA's `known_trip_count` annotation when present (final HLO),
    otherwise read from the condition `i < N` of a counter from 0 by 1 (how `lax.scan` lowers)."""
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.attrs)
    if m:
        return int(m.group(1))
    cond = module.computations[_attr(instr.attrs, "condition")]
    root = cond.instructions[cond.root]
    if root.opcode == "compare" and "direction=LT" in root.attrs:
        for operand in root.operands:
            c = cond.instructions.get(operand)
            if c is not None and c.opcode == "constant" and re.fullmatch(r"-?\d+", c.args.strip()):
                return int(c.args)
    raise ValueError(f"while loop {instr.name}: trip count unknown (condition {cond.name})")


def _callees(module: Module, instr: Instruction) -> list[tuple[str, int]]:
    """(computation, runs per execution of `instr`) for the computations `instr` calls. Reducer
    bodies (`to_apply`) are left out: they hold no dots or collectives."""
    if instr.opcode == "while":
        return [(_attr(instr.attrs, "body"), trip_count(module, instr)), (_attr(instr.attrs, "condition"), 1)]
    out = []
    for key in ("calls", "called_computations", "branch_computations"):
        m = re.search(rf"\b{key}=\{{?([^}},]*(?:,\s*%[\w.\-]+)*)\}}?", instr.attrs)
        if m:
            out += [(name, 1) for name in re.findall(r"%?([\w.\-]+)", m.group(1))]
    return [(c, n) for c, n in out if c in module.computations]


def multiplicities(module: Module) -> dict[str, int]:
    """Runs of each computation per execution of the entry computation."""
    runs: dict[str, int] = defaultdict(int)

    def visit(name: str, times: int) -> None:
        runs[name] += times
        for instr in module.computations[name].instructions.values():
            for callee, n in _callees(module, instr):
                visit(callee, times * n)

    visit(module.entry, 1)
    return dict(runs)


# --- FLOPs --------------------------------------------------------------------------------------

def _dims(attrs: str, key: str) -> list[int]:
    m = re.search(rf"{key}=\{{([0-9,]*)\}}", attrs)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def dot_flops(module: Module) -> float:
    """2·(output elements)·(contracted elements) summed over every dot, times its computation's
    runs: the FLOPs of one execution on one device (the HLO is already partitioned)."""
    runs = multiplicities(module)
    total = 0.0
    for name, times in runs.items():
        comp = module.computations[name]
        for instr in comp.instructions.values():
            if instr.opcode != "dot":
                continue
            lhs = comp.instructions[instr.operands[0]].shapes[0]
            contracted = math.prod(lhs.dims[d] for d in _dims(instr.attrs, "lhs_contracting_dims"))
            total += times * 2.0 * math.prod(instr.shapes[0].dims) * contracted
    return total


# --- collectives --------------------------------------------------------------------------------

def _iota(dims: list[int], reshape: list[int], perm: list[int] | None) -> np.ndarray:
    ids = np.arange(math.prod(reshape)).reshape(reshape)
    if perm is not None:
        ids = ids.transpose(perm)
    return ids.reshape(dims)


_IOTA = re.compile(r"\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?")


def _ints(text: str | None) -> list[int]:
    return [int(x) for x in text.split(",")] if text else []


def replica_groups(attrs: str, num_devices: int | None = None) -> list[list[int]]:
    """The device groups of a collective, in any of the three spellings (module docstring).
    `replica_groups={}` means one group of every device (`num_devices` needed then)."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\((.*?)\))?\s*\{([^}]*)\}", attrs)
    if m:
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        ids_text = (m.group(2) or f"[{math.prod(sizes)}]").strip()   # no device_ids: 0, 1, 2, …
        it = re.fullmatch(r"\[([0-9,]+)\](?:T\(([0-9,]+)\))?", ids_text)
        if it:
            ids = _iota([math.prod(sizes)], _ints(it.group(1)), _ints(it.group(2)) or None)
        else:
            ids = np.array(_ints(ids_text.replace(" ", "")))
        grid = ids.reshape(sizes)
        over = [names.index(a) for a in re.findall(r"'([^']+)'", m.group(3))]
        rest = [i for i in range(len(sizes)) if i not in over]
        grid = grid.transpose(rest + over).reshape(-1, math.prod(sizes[i] for i in over) if over else 1)
        return grid.tolist()
    m = re.search(r"replica_groups=" + _IOTA.pattern, attrs)
    if m:
        return _iota(_ints(m.group(1)), _ints(m.group(2)), _ints(m.group(3)) or None).tolist()
    at = attrs.find("replica_groups={")
    if at >= 0:
        start = at + len("replica_groups=")
        text = attrs[start:_balanced(attrs, start)]
        groups = [g for g in (_ints(g) for g in re.findall(r"\{([0-9,]*)\}", text[1:-1])) if g]
        if groups:
            return groups
        if num_devices is None:
            raise ValueError("replica_groups={} (all devices) needs the device count")
        return [list(range(num_devices))]
    raise ValueError(f"no replica groups in: {attrs[:120]}")


def source_target_pairs(attrs: str) -> list[tuple[int, int]]:
    at = attrs.find("source_target_pairs={")
    if at < 0:
        return []
    start = at + len("source_target_pairs=")
    return [(int(a), int(b)) for a, b in re.findall(r"\{(\d+),(\d+)\}", attrs[start:_balanced(attrs, start)])]


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str                      # one of collectives.KINDS
    name: str                      # the HLO instruction
    computation: str
    runs: int                      # executions per step (loop trip counts)
    dtype: str
    operand_bytes: int             # per device, per execution
    result_bytes: int
    groups: tuple[tuple[int, ...], ...]   # empty for collective-permute
    pairs: tuple[tuple[int, int], ...]    # collective-permute only
    disguised: bool = False        # an all-reduce read back only through dynamic-slices


def _users(comp: Computation) -> dict[str, list[Instruction]]:
    users = defaultdict(list)
    for instr in comp.instructions.values():
        for operand in instr.operands:
            users[operand].append(instr)
    return users


def _only_sliced(module: Module, comp: Computation, users: dict, name: str) -> bool:
    """Is every use of `name` a dynamic-slice — directly, through layout-only ops, or inside a
    fusion that only slices it?"""
    uses = users.get(name, [])
    if not uses:
        return False
    for use in uses:
        if use.opcode == "dynamic-slice" and use.operands[0] == name:
            continue
        if use.opcode in ("bitcast", "reshape", "copy"):   # layout-only: look through them
            if _only_sliced(module, comp, users, use.name):
                continue
            return False
        if use.opcode == "fusion":
            fused = module.computations.get(_attr(use.attrs, "calls") or "")
            if fused is None:
                return False
            index = use.operands.index(name)
            params = [i for i in fused.instructions.values() if i.opcode == "parameter" and i.args.strip() == str(index)]
            fused_users = _users(fused)
            if not params or not all(_only_sliced(module, fused, fused_users, p.name) for p in params):
                return False
            continue
        return False
    return True


def collectives(module: Module, num_devices: int | None = None) -> list[Collective]:
    runs = multiplicities(module)
    out = []
    for comp_name, times in runs.items():
        comp = module.computations[comp_name]
        users = None
        for instr in comp.instructions.values():
            kind = instr.opcode.removesuffix("-start")
            if kind not in KINDS:
                continue
            operand_bytes = sum(comp.instructions[o].nbytes for o in instr.operands if o in comp.instructions)
            disguised = False
            if kind == "all-reduce":
                users = users or _users(comp)
                if _only_sliced(module, comp, users, instr.name):
                    kind, disguised = "reduce-scatter", True
            groups = () if kind == "collective-permute" else tuple(
                tuple(g) for g in replica_groups(instr.attrs, num_devices))
            result_bytes = instr.nbytes
            if disguised:   # what the slices keep: the operand split over the group
                result_bytes = operand_bytes // max(len(groups[0]), 1)
            out.append(Collective(kind, instr.name, comp_name, times, instr.shapes[0].dtype if instr.shapes else "",
                                  operand_bytes, result_bytes, groups,
                                  tuple(source_target_pairs(instr.attrs)), disguised))
    return out
