"""The error `rj.emulate()` raises for settings it cannot emulate.

A subclass of ConfigError (so of ValueError): the same one-line message naming the setting and the
fix that the `rainier` commands show, spelled for a Python caller — its settings are the
arguments `mesh`, `parallel` and `lnc` (rainier_jax/config/errors.py, `spell`)."""

from __future__ import annotations

from rainier_jax.config.errors import ConfigError


class EmulationError(ConfigError):
    """`rj.emulate()` cannot give the mesh asked for: a bad or contradicting setting, or JAX
    already started on another number of devices. The message says how to fix it."""
