"""Pipeline schedules as data: a table of (tick, device) → at most one forward and one backward.

A pipeline of P devices runs G = P·V model chunks ("virtual stages"); chunk g lives on device
g mod P. A work item is (chunk, microbatch). Each schedule is built by one small simulator that
executes, on every device, the next item of that device's forward order and of its backward order
as soon as its inputs have arrived (sent in an earlier tick), optionally holding forwards back to
bound the activations a device keeps. The policies differ only in those orders and limits:

* gpipe — all forwards, then all backwards; a device keeps every microbatch's activations (M·V).
* 1f1b — forwards in order, but a device starts a new microbatch only while fewer than P − p are
  in flight on it (p its index): after a warm-up, each tick pairs a forward with a backward.
* interleaved — 1f1b over V chunks per device, in Megatron's order: microbatches in groups of P,
  each group through chunk 0, then chunk 1, … (backwards in reverse chunk order).

Time model (for bubbles): devices advance in lock step; a tick lasts F if any device runs a
forward, plus B if any runs a backward, where F = B = 1/V (a chunk holds 1/V of a device's layers).
Each device's useful work is 2·M, so bubble = 1 − 2M / total time — the textbook (P−1)/(M+P−1) for
GPipe and 1F1B and (P−1)/(V·M+P−1) for interleaved (tests/test_schedules.py checks both).
"""

from __future__ import annotations

import dataclasses
from enum import Enum

import numpy as np

from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.config.values import bounded_int, size_product

IDLE = -1


class ScheduleKind(str, Enum):
    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"
    INTERLEAVED = "interleaved"


SCHEDULES = tuple(k.value for k in ScheduleKind)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """`fwd[t, p]` / `bwd[t, p]` = (chunk, microbatch) that device p runs at tick t, or (-1, -1)."""
    kind: ScheduleKind
    P: int
    M: int
    V: int
    fwd: np.ndarray   # int32 [ticks, P, 2]
    bwd: np.ndarray   # int32 [ticks, P, 2]

    @property
    def ticks(self) -> int:
        return self.fwd.shape[0]

    @property
    def num_chunks(self) -> int:
        return self.P * self.V

    def total_time(self) -> float:
        """Lock-step time in units of a full stage's forward (F = B = 1/V per chunk)."""
        work = (self.fwd[:, :, 0] != IDLE).astype(int) + (self.bwd[:, :, 0] != IDLE).astype(int)
        return float(work.max(axis=1).sum()) / self.V

    def bubble(self) -> float:
        return 1.0 - 2.0 * self.M / self.total_time()

    def theoretical_bubble(self) -> float:
        if self.kind is ScheduleKind.INTERLEAVED:
            return (self.P - 1) / (self.V * self.M + self.P - 1)
        return (self.P - 1) / (self.M + self.P - 1)

    def in_flight(self) -> np.ndarray:
        """`[ticks, P]`: microbatch-chunks whose activations a device holds during each tick
        (forward done or running, backward not yet finished)."""
        held = np.zeros((self.ticks, self.P), dtype=np.int32)
        for p in range(self.P):
            live = 0
            for t in range(self.ticks):
                if self.fwd[t, p, 0] != IDLE:
                    live += 1
                held[t, p] = live
                if self.bwd[t, p, 0] != IDLE:
                    live -= 1
        return held

    def peak_in_flight(self) -> list[int]:
        return self.in_flight().max(axis=0).tolist()


def _orders(kind: ScheduleKind, P: int, M: int, V: int, p: int):
    chunks = [v * P + p for v in range(V)]
    if kind is ScheduleKind.INTERLEAVED:
        groups = [range(k, min(k + P, M)) for k in range(0, M, P)]
        fwd = [(g, m) for grp in groups for g in chunks for m in grp]
        bwd = [(g, m) for grp in groups for g in reversed(chunks) for m in grp]
    else:
        fwd = [(chunks[0], m) for m in range(M)]
        bwd = [(chunks[0], m) for m in range(M)]
    return fwd, bwd


def _limit(kind: ScheduleKind, P: int, M: int, V: int, p: int) -> int:
    """How many microbatch-chunks device p may hold before it must wait for a backward."""
    if kind is ScheduleKind.GPIPE:
        return M * V
    if kind is ScheduleKind.ONE_F_ONE_B:
        return P - p
    # Megatron's interleaved warm-up: (P − p − 1)·2 + (V − 1)·P forwards before the first
    # backward, plus the one that pairs with it.
    return min(M * V, 2 * (P - p - 1) + (V - 1) * P + 1)


def build_schedule(kind: ScheduleKind | str, P: int, M: int, V: int = 1) -> Schedule:
    kind = ScheduleKind(kind)
    validate(kind, P, M, V)
    G = P * V
    fwd_order = [_orders(kind, P, M, V, p)[0] for p in range(P)]
    bwd_order = [_orders(kind, P, M, V, p)[1] for p in range(P)]
    limits = [_limit(kind, P, M, V, p) for p in range(P)]
    f_done: dict[tuple[int, int], int] = {}   # (chunk, mb) → tick its forward ran
    b_done: dict[tuple[int, int], int] = {}
    nf, nb = [0] * P, [0] * P
    fwd_rows, bwd_rows = [], []
    t = 0
    while any(nb[p] < len(bwd_order[p]) for p in range(P)):
        if t > 4 * G * M + 4 * G:   # a policy bug, not user input
            raise RuntimeError(f"{kind.value} schedule for P={P}, M={M}, V={V} does not finish")
        f_row = np.full((P, 2), IDLE, np.int32)
        b_row = np.full((P, 2), IDLE, np.int32)
        for p in range(P):
            # One op per device per tick (the time model the bubble formulas assume), the
            # forward first whenever the in-flight limit allows one: that is what keeps the
            # next device fed (backward-first starves interleaved pipelines).
            if nf[p] < len(fwd_order[p]) and nf[p] - nb[p] < limits[p]:
                g, m = fwd_order[p][nf[p]]
                src = f_done.get((g - 1, m)) if g > 0 else -1
                if src is not None and src < t:
                    f_row[p] = (g, m)
                    continue
            if nb[p] < len(bwd_order[p]):
                g, m = bwd_order[p][nb[p]]
                src = b_done.get((g + 1, m)) if g < G - 1 else f_done.get((g, m))
                gpipe_wait = kind is ScheduleKind.GPIPE and nf[p] < len(fwd_order[p])
                if src is not None and src < t and not gpipe_wait:
                    b_row[p] = (g, m)
        for p in range(P):
            if f_row[p, 0] != IDLE:
                f_done[tuple(f_row[p])] = t
                nf[p] += 1
            if b_row[p, 0] != IDLE:
                b_done[tuple(b_row[p])] = t
                nb[p] += 1
        fwd_rows.append(f_row)
        bwd_rows.append(b_row)
        t += 1
    return Schedule(kind, P, M, V, np.stack(fwd_rows), np.stack(bwd_rows))


def pack(s: Schedule) -> Schedule:
    """The same per-device order of work, with each device's next forward and next backward run
    in one tick whenever both are ready: what the SPMD executor runs.

    The executor pays for a forward and a backward on every device in every tick that has any of
    each, so a table with one op per device per tick (the textbook timeline, `s`) would leave half
    of every steady-state tick masked. Packing keeps every device's order, and merges a forward
    with the backward that follows it (different microbatches): the in-flight bound is kept."""
    G = s.num_chunks
    seq = [[] for _ in range(s.P)]
    for t in range(s.ticks):
        for p in range(s.P):
            for kind, table in (("F", s.fwd), ("B", s.bwd)):
                if table[t, p, 0] != IDLE:
                    seq[p].append((kind, int(table[t, p, 0]), int(table[t, p, 1])))
    f_done: dict[tuple[int, int], int] = {}
    b_done: dict[tuple[int, int], int] = {}
    ptr = [0] * s.P
    fwd_rows, bwd_rows = [], []
    t = 0

    def ready(op):
        kind, g, m = op
        if kind == "F":
            return g == 0 or f_done.get((g - 1, m), t) < t
        return (f_done.get((g, m), t) if g == G - 1 else b_done.get((g + 1, m), t)) < t

    while any(ptr[p] < len(seq[p]) for p in range(s.P)):
        f_row = np.full((s.P, 2), IDLE, np.int32)
        b_row = np.full((s.P, 2), IDLE, np.int32)
        for p in range(s.P):
            taken = []
            while ptr[p] < len(seq[p]) and len(taken) < 2:
                op = seq[p][ptr[p]]
                # Merge only a backward into its preceding forward's tick: a forward after a
                # backward would need its stash slot while the backward still reads another.
                if not ready(op) or any(k == op[0] or m == op[2] or k == "B" for k, _, m in taken):
                    break
                taken.append(op)
                ptr[p] += 1
            for kind, g, m in taken:
                (f_row if kind == "F" else b_row)[p] = (g, m)
        for p in range(s.P):
            if f_row[p, 0] != IDLE:
                f_done[(int(f_row[p, 0]), int(f_row[p, 1]))] = t
            if b_row[p, 0] != IDLE:
                b_done[(int(b_row[p, 0]), int(b_row[p, 1]))] = t
        fwd_rows.append(f_row)
        bwd_rows.append(b_row)
        t += 1
    return dataclasses.replace(s, fwd=np.stack(fwd_rows), bwd=np.stack(bwd_rows))


def segments(s: Schedule) -> list[tuple[int, int, bool, bool]]:
    """Maximal runs of ticks with the same (any forward, any backward): the pipeline executor
    compiles one scan per run, and the performance model counts its collectives by them."""
    kinds = list(zip((s.fwd[:, :, 0] != IDLE).any(axis=1).tolist(), (s.bwd[:, :, 0] != IDLE).any(axis=1).tolist()))
    runs, start = [], 0
    for t in range(1, len(kinds) + 1):
        if t == len(kinds) or kinds[t] != kinds[start]:
            runs.append((start, t, *kinds[start]))
            start = t
    return runs


# The simulator and the table cost time and memory in proportion to devices × ticks, about
# P·(V·M + P) cells (≈ 4 µs each here): 2**18 cells is about a second, e.g. pp=64 with 1,024
# microbatches, or pp=128 with 512 × 2 virtual stages. Beyond it the schedule is refused, not
# ground through for minutes.
MAX_SCHEDULE_CELLS = 2**18


def _given(name: str, value: int, defaulted: frozenset[str]) -> str:
    """`microbatches 1`, or `microbatches 1 (the default)` when the user did not give it, so a
    message never blames a setting the user never gave without saying so."""
    return f"{setting(name)} {value}" + (" (the default)" if name in defaulted else "")


def validate(kind: ScheduleKind, P: int, M: int, V: int, n_layers: int | None = None, *,
             defaulted: frozenset[str] = frozenset()) -> None:
    """Bad pipeline settings (pp, microbatches, virtual_stages) → one line naming the setting and
    the fix. `defaulted` names the settings (microbatches, virtual_stages, schedule) that hold
    their default value, not one the user gave."""
    mb, vs = _given("microbatches", M, defaulted), _given("virtual_stages", V, defaulted)
    sched = kind.value + (" (the default schedule)" if "schedule" in defaulted else "")
    bounded_int(setting("pp"), P, want="a positive number of stages")
    bounded_int(setting("microbatches"), M, want="a positive number")
    bounded_int(setting("virtual_stages"), V, want="a positive number")
    size_product("pipeline schedule", {"pp": P, "(virtual stages × microbatches + pp)": V * M + P},
                 limit=MAX_SCHEDULE_CELLS, why="the schedule table's devices × ticks; larger tables take minutes")
    if kind is ScheduleKind.INTERLEAVED:
        if V < 2:
            raise ConfigError(f"{vs}: the interleaved schedule needs at least 2 "
                              f"virtual stages per device (e.g. {setting('virtual_stages')} 2)")
        if M % P:
            raise ConfigError(f"{mb}: the interleaved schedule runs microbatches in groups "
                              f"of pp={P}; use a multiple of {P}")
    elif V != 1:
        raise ConfigError(f"{vs}: only the interleaved schedule uses virtual stages "
                          f"(use {setting('schedule')} interleaved, or {setting('virtual_stages')} 1)")
    if kind is not ScheduleKind.GPIPE and M < P:
        raise ConfigError(f"{mb}: {sched} needs at least as many microbatches as "
                          f"stages (pp={P}); use {setting('microbatches')} {P} or more"
                          + (f", or {setting('schedule')} gpipe" if "schedule" in defaulted else ""))
    if n_layers is not None and n_layers % (P * V):
        raise ConfigError(f"{setting('pp')} {P}: the model's {n_layers} layers do not split into pp×virtual stages = "
                          f"{P * V} equal chunks; choose pp×V dividing {n_layers}")


def check_table(s: Schedule) -> list[str]:
    """Independent check of a table's dependencies and per-tick limits; returns the violations."""
    problems = []
    f_at, b_at = {}, {}
    for t in range(s.ticks):
        for p in range(s.P):
            for table, at, name in ((s.fwd, f_at, "forward"), (s.bwd, b_at, "backward")):
                g, m = (int(v) for v in table[t, p])
                if g == IDLE:
                    continue
                if g % s.P != p:
                    problems.append(f"tick {t}: chunk {g} runs on device {p}, not {g % s.P}")
                if (g, m) in at:
                    problems.append(f"tick {t}: {name} of chunk {g} microbatch {m} runs twice")
                at[(g, m)] = t
            # The table holds one forward and one backward slot per device and tick; the two must
            # belong to different microbatches.
            if s.fwd[t, p, 0] != IDLE and s.bwd[t, p, 0] != IDLE and s.fwd[t, p, 1] == s.bwd[t, p, 1]:
                problems.append(f"tick {t}: device {p} runs forward and backward of one microbatch")
    G = s.num_chunks
    for g in range(G):
        for m in range(s.M):
            if (g, m) not in f_at or (g, m) not in b_at:
                problems.append(f"chunk {g} microbatch {m}: missing forward or backward")
                continue
            if g > 0 and not f_at.get((g - 1, m), s.ticks) < f_at[(g, m)]:
                problems.append(f"microbatch {m}: forward on chunk {g} does not follow chunk {g - 1}")
            if not f_at[(g, m)] < b_at[(g, m)]:
                problems.append(f"microbatch {m}: backward on chunk {g} before its forward")
            if g < G - 1 and not b_at.get((g + 1, m), s.ticks) < b_at[(g, m)]:
                problems.append(f"microbatch {m}: backward on chunk {g} does not follow chunk {g + 1}")
    return problems
