"""Test-session setup: 8 emulated CPU devices and a persistent compile cache, set before JAX starts.

This file, dist/startup.py (`start_jax`, through which both the CLI and `rj.emulate()` start JAX) and
perf/compiled.py (which bypasses the compile cache around its HLO dump) are the only places that touch
`jax.config`.
"""

import os
from pathlib import Path

from rainier_jax.dist.startup import set_xla_flags

set_xla_flags()   # as the CLI does: layouts round alike (dist.startup.XLA_FLAGS)
import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)
# Compiled programs are cached on disk between test runs (and between tests that build the same
# program); the first CI run fills it.
_cache = Path(os.environ.get("RAINIER_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "jax"))
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
