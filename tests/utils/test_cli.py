"""utils/cli.py: flag range checks (messages spell flags as users type them) and the entry points' __main__ body."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from utils.cli import flag_name, require_at_least, require_positive, run_entry_point


@dataclass
class Flags:
    max_length: int = 512
    limit: int | None = None
    tolerance: float = 1e-4
    warmup: int = 0


def test_flag_names_are_dashed():
    assert flag_name("max_length") == "--max-length" and flag_name("C") == "--C"


def test_at_least_accepts_the_bound_and_values_left_out():
    require_at_least(Flags(max_length=2), 2, "max_length", "limit")
    require_at_least(Flags(), 0, "warmup")
    require_at_least({"max_length": 3}, 2, "max_length")


@pytest.mark.parametrize("flags, minimum, names, hint, message", [
    (Flags(max_length=1), 2, ("max_length",), None, "--max-length must be >= 2, got 1"),
    (Flags(limit=0), 1, ("max_length", "limit"), "or left out", "--limit must be >= 1 (or left out), got 0"),
    (Flags(warmup=-1, limit=0), 0, ("warmup", "limit"), None, "--warmup must be >= 0, got -1"),  # the first, in order
    ({"max_length": 1}, 2, ("max_length",), None, "--max-length must be >= 2, got 1"),
    (Flags(tolerance=math.nan), 0, ("tolerance",), None, "--tolerance must be >= 0, got nan"),
])
def test_at_least_names_the_flag_the_bound_and_the_value(flags, minimum, names, hint, message):
    with pytest.raises(ValueError) as raised:
        require_at_least(flags, minimum, *names, hint=hint)
    assert str(raised.value) == message


@pytest.mark.parametrize("value", [0, -1.0, math.nan])
def test_positive_refuses_zero_negatives_and_nan(value):
    with pytest.raises(ValueError, match=rf"^--tolerance must be > 0, got {value}$"):
        require_positive(Flags(tolerance=value), "tolerance")
    require_positive(Flags(tolerance=1e-9, limit=None), "tolerance", "limit")


@dataclass
class Args:
    n: int = field(default=1, metadata={"help": "a count"})


def test_entry_point_returns_mains_result_and_turns_user_errors_into_one_message(capsys):
    assert run_entry_point(lambda args: args.n * 2, Args, "python -m tool", argv=["--n", "3"]) == 6

    def main(args: Args) -> None:
        require_at_least(args, 1, "n")

    with pytest.raises(SystemExit) as raised:
        run_entry_point(main, Args, "python -m tool", argv=["--n", "0"])
    assert raised.value.code == 2
    assert capsys.readouterr().err == "python -m tool: error: --n must be >= 1, got 0\n"

    def missing(args: Args) -> None:
        raise FileNotFoundError("no such folder x")

    with pytest.raises(FileNotFoundError):  # not a declared user error: the traceback stays
        run_entry_point(missing, Args, "python -m tool", argv=[])
    with pytest.raises(SystemExit):
        run_entry_point(missing, Args, "python -m tool", errors=(ValueError, FileNotFoundError), argv=[])
    assert capsys.readouterr().err == "python -m tool: error: no such folder x\n"
    with pytest.raises(SystemExit) as raised:
        run_entry_point(main, Args, "python -m tool", argv=["--m", "1"])
    assert raised.value.code == 2 and "did you mean --n" in capsys.readouterr().err
