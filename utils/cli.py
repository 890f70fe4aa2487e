"""Command-line parsing shared by the entry points: dataclass fields <-> flags, with helpful errors."""

from __future__ import annotations

import difflib
import sys
from typing import Any

from transformers import HfArgumentParser


def parse_dataclasses(types: tuple[type, ...], argv: list[str] | None = None, prog: str | None = None) -> tuple[Any, ...]:
    """Parse ``argv`` into instances of the dataclasses ``types`` (flags accept ``--a_b`` and ``--a-b``).

    An unknown flag exits with status 2 and suggests the closest valid flag; so does a value the dataclasses reject
    (a ``ValueError``, ``ImportError`` or ``FileNotFoundError`` raised while building them, whose message names the fix).
    """
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
