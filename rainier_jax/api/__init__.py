"""The library's API for users' own code: `rj.emulate()` sizes JAX for an emulated Trainium2 mesh
and hands back that mesh, its sharding rules and helpers to put data on it (`Emulation`).

`rainier run SCRIPT` (rainier_jax/cli/run.py) runs a script whose `rj.emulate()` then takes the
command line's settings (rainier_jax/api/settings.py). Importing this package imports no JAX: the
device count can only be set before JAX starts, so JAX is imported when `emulate` is called.
"""

from rainier_jax.api.emulate import Emulation, emulate
from rainier_jax.api.errors import EmulationError

__all__ = ["Emulation", "EmulationError", "emulate"]
