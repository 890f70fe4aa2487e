"""The command line (serve/gateway/server.py): user mistakes end in one clear line and exit status 2."""

from __future__ import annotations

import logging
import re

import pytest

from serve.gateway.server import run_cli


@pytest.fixture(autouse=True)
def restore_gateway_logger():
    """run_cli configures the gateway's logger with a handler on the (captured) stderr of the test; later tests
    would log into that closed stream."""
    logger = logging.getLogger("serve.gateway")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


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


@pytest.mark.parametrize("argv, message", [
    (["--upstream", "ftp://admin:PASSWORD@host/v1"], "must be an http\\(s\\) base URL .* starting 'ftp'"),
    (["--stream-idle-timeout", "0"], "--stream-idle-timeout must be > 0 seconds"),
    (["--max-stream-seconds", "-1"], "--max-stream-seconds must be > 0 seconds"),
    (["--max-request-bytes", "0"], "--max-request-bytes must be >= 1"),
])
def test_new_limits_are_checked_and_a_bad_upstream_url_is_not_echoed(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        run_cli(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and re.search(message, err), err
    assert "PASSWORD" not in err
