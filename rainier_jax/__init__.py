"""rainier-jax: emulate AWS Trainium2 meshes with JAX on CPU.

For users' own code: `import rainier_jax as rj`, then `rj.emulate(mesh=..., parallel=...)`
before anything else uses JAX (rainier_jax/api/emulate.py); `rj.Emulation` is what it returns and
`rj.EmulationError` what it raises. The names are imported on first use (PEP 562), so importing
the package imports neither JAX nor any of the library: the JAX-free commands stay JAX-free, and
no library module depends on this file.
"""

__all__ = ["Emulation", "EmulationError", "emulate"]


def __getattr__(name: str):
    if name in __all__:
        import rainier_jax.api as api
        return getattr(api, name)
    raise AttributeError(f"module 'rainier_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
