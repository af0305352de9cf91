"""`python -m rainier_jax.cli …` runs the `rainier` command (the launcher starts its children so)."""

from rainier_jax.cli.main import entry

entry()
