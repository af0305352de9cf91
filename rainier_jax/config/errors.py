"""The one error type for bad settings, and how its messages name settings.

Library code names a *setting* (`parallel`, `microbatches`, `checkpoint_dir`), never a command-line
flag: the same check serves `rainier train`, where the setting is the flag `--microbatches`, and
Python callers, where it is an argument or a field. A message marks each setting it mentions with
`setting("microbatches")`; `str(error)` shows the bare names, and a front end spells them its own
way with `spell(text, names)` (the CLI's table of flags is rainier_jax/cli/flags.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The marks around a setting's name in a message: characters no setting name contains and user
# input almost never does, so a value quoted in a message is not mistaken for a setting.
_OPEN, _CLOSE = "\u2039", "\u203a"
_MARKED = re.compile(f"{_OPEN}([a-z][a-z0-9_]*){_CLOSE}")


def setting(name: str) -> str:
    """`name` marked as a setting inside a message (shown as the front end spells it)."""
    return f"{_OPEN}{name}{_CLOSE}"


def spell(text: str, names: Callable[[str], str] | dict[str, str] | None = None) -> str:
    """`text` with every marked setting written as `names` spells it (the bare name by default;
    a dict leaves the names it does not hold bare)."""
    if names is None:
        return _MARKED.sub(lambda m: m.group(1), text)
    lookup = names.get if isinstance(names, dict) else None
    return _MARKED.sub(lambda m: (lookup(m.group(1), m.group(1)) if lookup else names(m.group(1))), text)


class ConfigError(ValueError):
    """Bad user input: one line naming the setting (or file key) and the fix; exit code 2 in the CLI.

    `raw` keeps the setting marks (for a front end, or to wrap the message in another);
    `str()` shows the bare setting names."""

    @property
    def raw(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return spell(self.raw)
