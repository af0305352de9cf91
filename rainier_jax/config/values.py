"""The checks every user-given number goes through, one function per kind of value: a bounded
integer, a finite float, a product of sizes. Run settings, TOML keys and config.json fields all
call these, so a value beyond what the program can hold is refused in one line naming the setting —
not by an overflow after compiling, an XLA abort, or an error message too big to print.

Each check takes `name` as the message should show it: a setting marked with
`errors.setting("batch")` (a front end spells it, e.g. as the flag `--batch`), or a file key
written out (`rope_theta =`, `mesh.instances`), which stays as written.

No JAX here (the CLI validates before JAX starts).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from rainier_jax.config.errors import ConfigError

# The step counter, token ids and batch indices are int32 in the compiled program; seeds feed a
# uint32 hash through an int32 array (numerics.random_bits).
INT32_MAX = 2**31 - 1
# Widest integer any file value may hold: numpy/XLA shapes and byte counts are int64.
INT64_MAX = 2**63 - 1


def show(value) -> str:
    """`value` for an error message: a huge integer as its first and last digits (Python refuses
    to print integers over 4,300 digits, and a 4,000-digit one is not a useful line either)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**21:
        digits = math.floor(value.bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}(an integer of about {digits:,} digits)"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:40] + "…")
    return str(value)


def bounded_int(name: str, value, *, lo: int = 1, hi: int = INT32_MAX, want: str | None = None,
                why: str = "") -> int:
    """`value` as an int in [lo, hi], else a ConfigError: "NAME VALUE: must be WANT". `why` says
    where the upper bound comes from when it is hit."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} {show(value)}: must be an integer")
    want = want or ("a positive integer" if lo == 1 else f"an integer ≥ {lo}")
    if value < lo:
        raise ConfigError(f"{name} {show(value)}: must be {want}")
    if value > hi:
        raise ConfigError(f"{name} {show(value)}: must be at most {hi:,}" + (f" ({why})" if why else ""))
    return value


def finite_float(name: str, value, *, positive: bool = True, lo: float | None = None,
                 hi: float | None = None, want: str | None = None) -> float:
    """`value` as a finite float (positive unless `positive=False`, within [lo, hi] when given),
    else a ConfigError naming the setting. NaN and ±inf are never a meaningful setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} {show(value)}: must be a number")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} {value}: must be a finite number" + (f" ({want})" if want else ""))
    if positive and not v > 0:
        raise ConfigError(f"{name} {value}: must be {want or 'a positive number'}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f"between {lo:g} and {hi:g}" if lo is not None and hi is not None else \
            f"at least {lo:g}" if lo is not None else f"at most {hi:g}"
        raise ConfigError(f"{name} {value}: must be {want or bounds}")
    return v


def size_product(name: str, factors: Mapping[str, int] | Sequence[int], *, limit: int, why: str) -> int:
    """The product of `factors` (name → size, or bare sizes), refused when above `limit`, naming
    every factor and the reason for the limit: the guard against inputs that ask for unbounded
    work or memory."""
    sizes = list(factors.values()) if isinstance(factors, Mapping) else list(factors)
    total = math.prod(sizes)
    if total > limit:
        parts = (" × ".join(f"{k} {show(v)}" for k, v in factors.items()) if isinstance(factors, Mapping)
                 else " × ".join(map(show, sizes)))
        raise ConfigError(f"{name}: {parts} = {show(total) if total >= 10**21 else f'{total:,}'} is above the "
                          f"limit of {limit:,} ({why})")
    return total
