"""The command line (serve/gateway/server.py): user mistakes end in one clear line and exit status 2."""

from __future__ import annotations

import re

import pytest

from serve.gateway.server import run_cli


@pytest.mark.parametrize("argv, message", [
    (["--model-path", "no/such/monitor"], "no monitor checkpoint at no/such/monitor .*bash scripts/run-scm.sh"),
    (["--upstream", "http://127.0.0.1:1/v1", "--generator", "x"], "not both"),
    (["--upstream", "127.0.0.1:8001"], "http\\(s\\) base URL"),
    (["--max-streams", "0"], "--max-streams must be >= 1"),
])
def test_cli_mistakes_exit_2_with_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        run_cli(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m serve.gateway: error: ")
    assert re.search(message, err), err


def test_unknown_flag_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as caught:
        run_cli(["--max-streems", "3"])
    assert caught.value.code == 2 and "did you mean --max-streams" in capsys.readouterr().err
