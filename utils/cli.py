"""Command-line parsing shared by the entry points: dataclass fields <-> flags, with helpful errors."""

from __future__ import annotations

import difflib
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
