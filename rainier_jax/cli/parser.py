"""argparse as the `rainier` command needs it: every error one line naming the subcommand (exit
code 2 in cli/main.py), and a suggestion for a mistyped flag, command or choice."""

from __future__ import annotations

import argparse
import difflib
import sys

from rainier_jax.config.errors import ConfigError


def close_matches(word: str, choices, *, prefixes: bool = False) -> list[str]:
    """The choices nearest a mistyped `word`, best first (at most 3; near-ties kept together).

    difflib's ratio, cutoff 0.6. With `prefixes`, a choice's leading len(word) characters count
    too (at a stricter 0.75), since argparse takes any unique prefix of a flag: a mistyped
    abbreviation such as "mircro" then still finds "microbatches"."""
    scores = {}
    for choice in choices:
        score = difflib.SequenceMatcher(None, word, choice).ratio()
        if score < 0.6:
            score = 0.0
        if prefixes and len(word) >= 4 and len(choice) > len(word):
            head = difflib.SequenceMatcher(None, word, choice[:len(word)]).ratio()
            score = max(score, head if head >= 0.75 else 0.0)
        if score:
            scores[choice] = score
    best = max(scores.values(), default=0.0)
    return sorted((c for c, s in scores.items() if s >= best - 0.05), key=lambda c: -scores[c])[:3]


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class Parser(argparse.ArgumentParser):
    """argparse with every error as one ConfigError line that names the subcommand, and a
    suggestion for a mistyped flag or command.

    `rest`: the dest that takes every argument after the first `--` unread, wherever the
    command's own flags stand before it (`rainier run SCRIPT --mesh M -- ARGS`: the script's own
    arguments). argparse alone would give the words after `--` to the first positional argument
    that still takes some, or refuse them."""

    def __init__(self, *args, rest: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rest = rest

    @property
    def command(self) -> str:
        """The subcommand this parser reads: "train", "mesh show"; "" for `rainier` itself."""
        return self.prog.partition(" ")[2]

    def _fail(self, message: str):
        # main() prints "rainier: error: " in front, so the command, not the prog, leads here.
        raise ConfigError(f"{self.command}: {message}" if self.command else message)

    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        # argparse checks required flags before it reports unknown ones, but a mistyped required
        # flag ("--shedule") is the cause of both: name the typo instead. (The text is argparse's,
        # unchanged from 3.11 to 3.13; if it ever changes, only this hint is lost.)
        if missing := message.partition("the following arguments are required: ")[2]:
            wanted = set(missing.split(", "))
            typos = [f for f in self._unknown_flags(getattr(self, "_argv", [])) if wanted & set(self._suggest(f))]
            if typos:
                self._fail(self._unrecognized(typos))
        self._fail(f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        self._argv = args  # for error()'s typo check
        rest = None
        if self.rest is not None and "--" in args:
            args, rest = args[:args.index("--")], args[args.index("--") + 1:]
        # argparse hands a subcommand's unknown arguments up to `rainier`, which would report them
        # without knowing whose they are; each parser reports its own, against its own flags.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self._fail(self._unrecognized(extras))
        if self.rest is not None:
            setattr(namespace, self.rest, rest or [])
        return namespace, extras

    def _suggest(self, flag: str) -> list[str]:
        # Names compared without their dashes: "--" would count as two matching characters in each.
        known = {o.lstrip("-"): o for o in self._option_string_actions}
        return [known[n] for n in close_matches(flag.lstrip("-"), known, prefixes=True)]

    def _unknown_flags(self, argv: list[str]) -> list[str]:
        """Flags in `argv` that are neither this parser's nor an abbreviation of one (up to "--")."""
        argv = argv[:argv.index("--")] if "--" in argv else argv
        names = [a.partition("=")[0] for a in argv if a.startswith("--") and len(a) > 2]
        return [n for n in names if not any(o.startswith(n) for o in self._option_string_actions)]

    def _unrecognized(self, extras: list[str]) -> str:
        flags = [a.partition("=")[0] for a in extras if a.startswith("-") and a != "-"]
        if not flags:  # stray positional words
            return f"unrecognized argument{'s' * (len(extras) > 1)} {' '.join(extras)} (see {self.prog} --help)"
        parts, suggested = [], False
        for flag in dict.fromkeys(flags):
            near = self._suggest(flag)
            suggested |= bool(near)
            parts.append(f"{flag} (did you mean {_one_of(near)}?)" if near else flag)
        return (f"unrecognized argument{'s' * (len(parts) > 1)} {', '.join(parts)}"
                + ("" if suggested else f" (see {self.prog} --help)"))

    def _check_value(self, action, value):
        # argparse's check of a subcommand name (or a choices= value), with a suggestion.
        if action.choices is None or value in action.choices:
            return
        names = [str(c) for c in action.choices]
        near = close_matches(str(value), names)
        flag = f"{'/'.join(action.option_strings)}: " if action.option_strings else ""
        hint = f"did you mean {_one_of(near)}?; " if near else ""
        self._fail(f"{flag}invalid choice {value!r} ({hint}choose from {', '.join(names)})")
