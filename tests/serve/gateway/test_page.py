"""The chat page (GET /, serve/gateway/static/index.html) in a real headless browser: Debian's chromium, installed
by the slow tier itself (scripts/setup-browser.sh), driven by playwright (test/page_screenshot.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test.page_screenshot import CHROMIUM, drive_page
from tests.serve.gateway.helpers import expected_for_ids, generate_offline, load_monitor, local_gateway, theta_between
from utils.decision_rules import DelayK

pytestmark = pytest.mark.slow
PROMPT = "How do I bake bread?"


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).is_file():
        subprocess.run(["bash", "scripts/setup-browser.sh"], check=True, timeout=1200)
    return CHROMIUM


def test_page_streams_colours_tokens_and_marks_the_stop(chromium, tiny_scm_dir, tiny_generator, tmp_path):
    monitor = load_monitor(tiny_scm_dir, theta=0.5, k=1)
    ids = generate_offline(tiny_generator, [{"role": "user", "content": PROMPT}], 40)
    scores = expected_for_ids(monitor, PROMPT, ids).scores
    monitor.theta, monitor.rule = theta_between(scores[:20], 1), DelayK(1)
    expected = expected_for_ids(monitor, PROMPT, ids)
    with local_gateway(monitor, tiny_generator) as (_, server):
        answers = drive_page(server.url + "/", [PROMPT], tmp_path / "page.png", chromium, max_tokens=40, timeout=120)
    (answer,) = answers
    assert answer["stopped"] and answer["tokens"] == expected.stop_index
    assert f"at response token {expected.stop_index}" in answer["banner"] and "delay-1" in answer["banner"]
    assert answer["text"].replace("STOPPED", "").strip() == expected.text.strip()
    assert (tmp_path / "page.png").stat().st_size > 10_000
