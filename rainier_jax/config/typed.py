"""Typed, validated configuration: TOML tables → frozen dataclasses.

Every config object in rainier-jax (mesh files, model files, the run configuration) is a frozen
dataclass built by `from_mapping`, which rejects unknown keys, missing keys and wrong types with a
single line that names the key and says what would fix it. The CLI turns `ConfigError` into exit
code 2; nothing else in the library prints or exits.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from rainier_jax.config.errors import ConfigError, setting as marked

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"int": "an integer", "float": "a number", "str": "a string",
                "bool": "true or false"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting TOML shapes where it is lossless."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(e.raw)
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_mapping(tp, value, where=where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        kt, vt = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {_convert(k, kt, f"{where}.{k}"): _convert(v, vt, f"{where}.{k}")
                for k, v in value.items()}
    from rainier_jax.config.values import INT64_MAX, finite_float, show
    if tp is float:
        # TOML writes 1000 for a float-valued figure as often as 1000.0; ints are exact here.
        # No setting of any file means anything as nan or inf (TOML allows both).
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > INT64_MAX:
                raise ConfigError(f"{where}: {show(value)} is too large for a number here")
            return finite_float(f"{where} =", value, positive=False)
        raise ConfigError(f"{where}: expected a number, got {show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT64_MAX:   # numpy and XLA hold sizes and counts in int64
                raise ConfigError(f"{where}: {show(value)} is too large (at most {INT64_MAX:,})")
            return value
        raise ConfigError(f"{where}: expected an integer, got {show(value)}"
                          + (" (write it without quotes)" if isinstance(value, str) and value.strip().lstrip("-").isdigit()
                             else ""))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {show(value)!r}"
                          + (" (write it without quotes)" if str(value).lower() in ("true", "false") else ""))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {show(value)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}") from None
    raise ConfigError(f"{where}: cannot read a value of type {_type_name(tp)}")


def from_mapping(cls: type[T], data: dict[str, Any], *, where: str) -> T:
    """Build dataclass `cls` from `data`; `where` names the source in error messages."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' "
                          f"(known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing required key (add `{name} = ...`)")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # __post_init__ checks phrase their own messages
        raise ConfigError(f"{where}: {e}") from None


# Mesh and model files are a few KiB; a bigger file is a wrong path, not a config.
MAX_CONFIG_BYTES = 1 << 20


def read_text_file(path: Path, what: str) -> bytes:
    """The bytes of a small config file, refusing non-regular files (a FIFO would block) and
    anything over MAX_CONFIG_BYTES, in one line."""
    import os
    import stat
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file; give the path of a {what}")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {st.st_size:,} bytes is too large for a {what} "
                          f"(at most {MAX_CONFIG_BYTES:,}); check the path")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_text_file(path, "TOML file").decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (no rainier file nests more than a few levels)") from None
    except ValueError as e:   # an integer of more than 4,300 digits, which Python refuses to convert
        raise ConfigError(f"{path}: not a usable TOML file ({str(e)[:80]})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None


def builtin_dir(kind: str) -> Path:
    """Directory of the built-in `meshes` or `models` files.

    They live at the repository's top level and are shipped inside the installed package as
    `rainier_jax/meshes` and `rainier_jax/models` (see pyproject.toml), so `rainier` finds them
    from any working directory.
    """
    package = Path(__file__).resolve().parent.parent  # rainier_jax/
    packaged = package / kind  # an installed package
    if packaged.is_dir():
        return packaged
    return package.parent / kind


def builtin_names(kind: str) -> list[str]:
    return sorted(p.stem for p in builtin_dir(kind).glob("*.toml"))


def resolve_named_file(name_or_path: str, kind: str, setting: str) -> Path:
    """A built-in name (`trn2-mini-8`) or a path to a TOML file, else a one-line error naming
    `setting` (e.g. "mesh", "model")."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError(f"{marked(setting)} {name_or_path}: no such file")
        return p
    candidate = builtin_dir(kind) / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    noun = {"meshes": "mesh", "models": "model"}.get(kind, kind)
    raise ConfigError(f"{marked(setting)} {name_or_path}: unknown {noun} name "
                      f"(built-in: {', '.join(builtin_names(kind))}; or give a path to a .toml file)")
