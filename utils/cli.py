"""Command-line parsing shared by the entry points: dataclass fields <-> flags, with helpful errors; flag range
checks; the ``__main__`` body that turns a user's mistake into one message.

Light to import (transformers is imported when flags are parsed), so models and data modules check their settings
with the same messages as the entry points.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")


def parse_dataclasses(types: tuple[type, ...], argv: list[str] | None = None, prog: str | None = None) -> tuple[Any, ...]:
    """Parse ``argv`` into instances of the dataclasses ``types`` (flags accept ``--a_b`` and ``--a-b``).

    An unknown flag exits with status 2 and suggests the closest valid flag; so does a value the dataclasses reject
    (a ``ValueError``, ``ImportError`` or ``FileNotFoundError`` raised while building them, whose message names the fix).
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(types, prog=prog)
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, ImportError, FileNotFoundError) as err:
        parser.error(str(err))
    if remaining:
        known = [opt for action in parser._actions for opt in action.option_strings]
        hints = []
        for item in remaining:
            if item.startswith("--"):
                close = difflib.get_close_matches(item.split("=")[0], known, n=1)
                hints.append(f"{item} (did you mean {close[0]}?)" if close else item)
        parser.error(
            f"unrecognized arguments: {' '.join(remaining)}"
            + (f"; {', '.join(hints)}" if hints else "")
            + "; run with --help for the valid flags"
        )
    return tuple(parsed)


def parse_command(commands: dict[str, type], argv: list[str] | None = None, prog: str = "") -> tuple[str, Any]:
    """``COMMAND FLAGS`` -> ``(COMMAND, its dataclass)`` for modules with several commands (``python -m utils.evaluation.loso
    build ...``); the flags are parsed as :func:`parse_dataclasses` does.

    Args:
        commands: command name -> the dataclass of its flags.
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the program name for messages, e.g. ``python -m utils.evaluation.loso``.

    Raises:
        SystemExit: status 2 for a missing or unknown command (the usage names the commands) or a bad flag.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        got = f" (got {argv[0]!r})" if argv else ""
        print(f"usage: {prog} {{{'|'.join(commands)}}} FLAGS{got}; `{prog} COMMAND --help` lists the flags",
              file=sys.stderr)
        raise SystemExit(2)
    (args,) = parse_dataclasses((commands[argv[0]],), argv[1:], prog=f"{prog} {argv[0]}")
    return argv[0], args


def flag_name(name: str) -> str:
    """A dataclass field's flag as users type it: ``max_length`` -> ``--max-length``."""
    return "--" + name.replace("_", "-")


def _check(source: Any, names: tuple[str, ...], accepts: Callable[[Any], bool], bound: str, hint: str | None) -> None:
    for name in names:
        value = source[name] if isinstance(source, Mapping) else getattr(source, name)
        if value is not None and not accepts(value):
            raise ValueError(f"{flag_name(name)} must be {bound}{f' ({hint})' if hint else ''}, got {value}")


def require_at_least(source: Any, minimum: float, *names: str, hint: str | None = None) -> None:
    """Check that flags are at least ``minimum``; a value left out (None) passes.

    Args:
        source: the parsed arguments (a dataclass or any object holding the fields), or a mapping name -> value.
        minimum: the smallest accepted value.
        *names: field names (``max_length``); messages spell them as flags (``--max-length``).
        hint: added after the bound in parentheses, e.g. ``or left out``.

    Raises:
        ValueError: ``--NAME must be >= MINIMUM (HINT), got VALUE`` for the first value below it (NaN included).
    """
    _check(source, names, lambda value: value >= minimum, f">= {minimum}", hint)


def require_positive(source: Any, *names: str, hint: str | None = None) -> None:
    """Check that flags are above 0; a value left out (None) passes. Arguments as :func:`require_at_least`.

    Raises:
        ValueError: ``--NAME must be > 0 (HINT), got VALUE`` for the first value that is not (NaN included).
    """
    _check(source, names, lambda value: value > 0, "> 0", hint)


def run_entry_point(main: Callable[[Any], T], arguments: type, prog: str,
                    errors: tuple[type[BaseException], ...] = (ValueError,), argv: list[str] | None = None) -> T:
    """The ``__main__`` body of an entry point whose flags are one dataclass: parse them (:func:`parse_dataclasses`),
    call ``main(args)`` and return what it returns.

    Args:
        main: the entry point's ``main``.
        arguments: the dataclass of its flags.
        prog: the command, e.g. ``python -m bench.benchmark``.
        errors: the exceptions a user's input can cause, whose messages name the fix.
        argv: the arguments (default ``sys.argv[1:]``).

    Raises:
        SystemExit: status 2 after printing ``PROG: error: MESSAGE`` (as argparse reports a bad flag) when ``main``
            raises one of ``errors``, instead of a traceback; status 2 for a bad flag.
    """
    (args,) = parse_dataclasses((arguments,), argv, prog=prog)
    try:
        return main(args)
    except errors as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
