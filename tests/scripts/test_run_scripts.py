"""The seed's shell drivers, end to end for two training steps on tiny random models (as a user types them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bash(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script, task", [("run-scm.sh", "scm"), ("run-qwen-full.sh", "qwen-full")])
def test_causal_training_drivers(script, task, tiny_causal_backbone, tiny_processed_data, tmp_path):
    out = tmp_path / task
    done = _bash(f"scripts/{script}", "--base-model-path", str(tiny_causal_backbone), "--data-dir",
                 str(tiny_processed_data), "--output-dir", str(out), "--max-steps", "2", "--report-to", "none")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["model"]["task"] == task and summary["result"]["global_step"] == 2
    assert json.loads((out / "config.json").read_text())["task"] == task


def test_encoder_training_driver(tiny_encoder_backbone, tiny_encoder_data, tmp_path):
    out = tmp_path / "encoder"
    done = _bash("scripts/run-modernbert-full.sh", "--base-model-path", str(tiny_encoder_backbone), "--data-dir",
                 str(tiny_encoder_data), "--output-dir", str(out), "--max-steps", "2", "--report-to", "none")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "training_summary.json").read_text())["result"]["global_step"] == 2


@pytest.mark.parametrize("script", ["run-qwen-partial.sh", "run-modernbert-partial.sh"])
def test_partial_drivers_only_evaluate(script):
    done = _bash(f"scripts/{script}", "--output-dir", "x")
    assert done.returncode == 2 and "usage:" in done.stderr and "test" in done.stderr


def test_base_model_without_data_dir_is_refused(tiny_causal_backbone):
    done = _bash("scripts/run-scm.sh", "--base-model-path", str(tiny_causal_backbone))
    assert done.returncode == 2 and "--data-dir is required" in done.stderr
