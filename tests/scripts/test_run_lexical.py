"""scripts/run-lexical.sh and run-report.sh --lexical-floor as a user types them, on hand-made processed text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_text_data import process, write_fineharm_folder

ROOT = Path(__file__).resolve().parents[2]


def _bash(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # four python processes (about a minute on this machine); the flows are tested in-process
def test_report_with_the_lexical_floor(tmp_path, qwen_tokenizer_dir):
    data = process(write_fineharm_folder(tmp_path / "fineharm"), tmp_path / "data", qwen_tokenizer_dir)
    report = tmp_path / "reports" / "report.md"
    done = _bash("scripts/run-report.sh", "--lexical-floor", str(data), "--output", str(report))
    assert done.returncode == 0, done.stderr[-2000:]
    floor = tmp_path / "reports" / "lexical-floor"
    assert (floor / "model" / "weights.safetensors").is_file()
    text = report.read_text()
    assert f"`{floor / 'full'}`" in text and f"`{floor / 'partial'}`" in text
    assert "| Lexical floor (TF-IDF + LR) (model) | full | fixed |" in text
    assert "| Lexical floor (TF-IDF + LR) (model) | partial* (holistic) | leak-free |" in text


def test_usage_errors():
    done = _bash("scripts/run-lexical.sh", "floor", "--data-dir", "x")
    assert done.returncode == 2 and "usage: bash scripts/run-lexical.sh floor" in done.stderr
    done = _bash("scripts/run-lexical.sh", "floor", "--data-dir", "x", "--output-dir", "y", "--C", "2")
    assert done.returncode == 2 and "only --data-dir DIR and --output-dir DIR" in done.stderr
    done = _bash("scripts/run-report.sh", "some-run", "--lexical-floor")
    assert done.returncode == 2 and "--lexical-floor needs a processed data folder" in done.stderr
