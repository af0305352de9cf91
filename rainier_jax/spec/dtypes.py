"""Bytes per element of every dtype rainier names, in the two vocabularies it names them in.

* HLO element types, as XLA's HLO text spells them (`f32`, `bf16`, `s32`, `pred`, …): what
  `perf/hlo.py` reads from a compiled program.
* The dtype names of precision policies (`float32`, `bfloat16`, `float16`; `spec/precision.py`),
  spelled as JAX and NumPy spell them: what the analytic performance model counts with.

One table of sizes (by HLO element type) and one map from the policy names onto it. No JAX here.
"""

from __future__ import annotations

# HLO element type → bytes of one element (a `token` orders side effects and holds no data).
HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3fnuz": 1,
             "f8e5m2fnuz": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
             "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0}

# A precision policy's dtype name → its HLO element type.
POLICY_HLO = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def itemsize(dtype: str) -> int:
    """Bytes of one element of `dtype`: a policy dtype name (`bfloat16`) or an HLO element type
    (`bf16`). KeyError for a name in neither table."""
    return HLO_BYTES[POLICY_HLO.get(dtype, dtype)]
