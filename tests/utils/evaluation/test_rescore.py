"""utils/evaluation/rescore.py: re-scoring an evaluation folder from its predictions reproduces what the evaluation wrote;
overrides, stale files, legacy summaries with absolute paths, predictions alone, the CLI and its shell driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from model import SCMConfig, SCMModel
from test import test_qwen_partial
from utils.io_utils import DataFormatError
from utils.evaluation.report import merged_report
from utils.evaluation.rescore import main, parse_args, recorded_repo_root, rescore_run

from tests.tiny_models import tiny_qwen2_config

REPO = Path(__file__).resolve().parents[3]
DERIVED = ("metrics-", "frontier-", "macro-f1-", "stop-histogram-", "score-traces", "report.md")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, tiny_causal_backbone, tiny_processed_data) -> Path:
    """An SCM evaluation folder written by test.test_qwen_partial on a tiny random checkpoint."""
    root = tmp_path_factory.mktemp("rescore")
    torch.manual_seed(0)
    checkpoint = root / "ckpt"
    SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), task="scm")).save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_causal_backbone / name, checkpoint / name)
    out = root / "eval"
    # Thresholds given unsorted: the recorded flags must survive re-scoring as the user typed them.
    test_qwen_partial.main(test_qwen_partial.parse_args([
        "--model-path", str(checkpoint), "--data-dir", str(tiny_processed_data), "--output-dir", str(out),
        "--max-k", "6", "--thresholds", "0.9,0.5,0.7", "--selection-tolerance", "2"]))
    return out


def _copy(evaluation: Path, tmp_path: Path, keep_summary: bool = True, keep_derived: bool = False) -> Path:
    """A copy of the evaluation folder holding its predictions (and its summary, and the files derived from them,
    when asked)."""
    run = tmp_path / "run"
    shutil.copytree(evaluation, run)
    for path in run.iterdir():
        if (path.name.startswith(DERIVED) and not keep_derived) or (path.name == "summary.json" and not keep_summary):
            path.unlink()
    return run


def _without(summary: dict, *keys: str) -> dict:
    return {key: value for key, value in summary.items() if key not in keys}


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_evaluation_summary_has_no_absolute_path(evaluation):
    summary = json.loads((evaluation / "summary.json").read_text())
    assert not [s for s in _strings(summary) if os.path.isabs(s)]
    assert summary["command"].startswith("python -m test.test_qwen_partial")
    meta = json.loads((evaluation / "predictions-test.meta.json").read_text())
    assert not os.path.isabs(meta["checkpoint"]) and not os.path.isabs(meta["data_dir"])
    assert summary["model"]["path"] == os.path.relpath(evaluation.parent / "ckpt", REPO)
    assert summary["arguments"]["selection_tolerance"] == 2.0 and summary["selection_tolerance"] == 0.02


def test_rescore_reproduces_the_evaluation(evaluation, tmp_path):
    run = _copy(evaluation, tmp_path)
    summary = rescore_run(run)
    original = json.loads((evaluation / "summary.json").read_text())
    written = json.loads((run / "summary.json").read_text())
    assert _without(written, "written_at") == _without(original, "written_at")
    assert _without(summary, "written_at") == _without(original, "written_at")
    assert written["arguments"]["thresholds"] == "0.9,0.5,0.7"
    for name in original["files"]["metrics"] + ["report.md"]:
        assert (run / name).read_bytes() == (evaluation / name).read_bytes(), name
    assert sorted(p.name for p in run.glob("*.png")) == sorted(original["plots"])


def test_rescore_from_the_predictions_alone(evaluation, tmp_path):
    run = _copy(evaluation, tmp_path, keep_summary=False)
    # The predictions do not hold the metric grid: without a summary it is the default one unless given.
    summary = rescore_run(run, thresholds=[0.5, 0.7, 0.9], max_k=6, tolerance_points=2)
    original = json.loads((evaluation / "summary.json").read_text())
    for key in ("full", "partial", "token_level", "scorers", "thresholds", "max_k", "selection_tolerance",
                "eval_split", "select_split", "rows"):
        assert summary[key] == original[key], key
    assert summary["model"]["path"] == original["model"]["path"] and summary["model"]["task"] == "scm"
    assert summary["data"]["splits"]["test"] == {k: v for k, v in original["data"]["splits"]["test"].items()
                                                 if k != "examples_per_second"}
    assert summary["script"] == "test.test_qwen_partial" and summary["runtime"]["device"] == "cpu"


def test_overrides_change_the_grid_and_remove_stale_files(evaluation, tmp_path):
    run = _copy(evaluation, tmp_path, keep_derived=True)
    summary = rescore_run(run, thresholds=[0.5, 0.7], max_k=3, tolerance_points=0.0)
    assert summary["thresholds"] == [0.5, 0.7] and summary["max_k"] == 3
    assert summary["arguments"]["thresholds"] == "0.5,0.7" and summary["arguments"]["selection_tolerance"] == 0.0
    assert not list(run.glob("metrics-*theta0.9.json")) and (run / "metrics-partial-token-theta0.7.json").is_file()
    for partial in summary["partial"].values():
        assert set(partial["paper"]) == {"0.5", "0.7"}
        # Tolerance 0: the early rule is the max-F1 rule.
        assert _without(partial["leak_free_early"], "protocol") == _without(partial["leak_free"], "protocol")
        assert len(partial["sweep"]["test"]["macro_f1"]["0.5"]) == 3
    with pytest.raises(ValueError, match="--selection-tolerance is in macro-F1 points"):
        rescore_run(run, tolerance_points=-1)
    with pytest.raises(ValueError, match="--max-k must be >= 1"):
        rescore_run(run, max_k=0)


def test_legacy_summary_gets_portable_paths(evaluation, tmp_path):
    run = _copy(evaluation, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    # What an older version wrote: absolute paths, the script's file first in the command, no protocols.
    old_root = "/machine/repo"
    summary["command"] = (f"{old_root}/test/test_qwen_partial.py --model-path runs/x --data-dir "
                          f"{old_root}/.cache/data/y --output-dir results/x")
    summary["model"]["path"] = "runs/x"
    summary["data"]["data_dir"] = f"{old_root}/.cache/data/y"
    summary["data"]["meta"] = {"tokenizer": f"{old_root}/.cache/assets/tok", "source": "/machine/shared/data/realmix"}
    summary["arguments"]["data_dir"] = f"{old_root}/.cache/data/y"
    del summary["protocols"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataFormatError, match="python -m utils.evaluation.rescore"):
        merged_report([run])
    assert recorded_repo_root(summary["command"], "test.test_qwen_partial") == old_root
    new = rescore_run(run)
    assert new["command"] == ("python -m test.test_qwen_partial --model-path runs/x --data-dir .cache/data/y "
                              "--output-dir results/x")
    assert new["data"]["data_dir"] == ".cache/data/y" and new["arguments"]["data_dir"] == ".cache/data/y"
    assert new["data"]["meta"] == {"tokenizer": ".cache/assets/tok", "source": "../shared/data/realmix"}
    assert "| SCM (" in merged_report([run])


def test_cli_flags_and_errors(evaluation, tmp_path):
    run = _copy(evaluation, tmp_path)
    args = parse_args([str(run), "--report", "r.md", "--thresholds", "0.5", "--max-k", "4",
                       "--selection-tolerance", "0.5"])
    assert (args.run_dirs, args.report, args.thresholds, args.max_k, args.selection_tolerance) == (
        [str(run)], "r.md", "0.5", 4, 0.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no predictions-<split>.jsonl: it is not an evaluation"):
        main(parse_args([str(empty)]))
    with pytest.raises(ValueError, match="--thresholds: 1.5 is outside"):
        main(parse_args([str(run), "--thresholds", "1.5"]))
    with pytest.raises(SystemExit):
        parse_args([])


def test_shell_driver(evaluation, tmp_path):
    run = _copy(evaluation, tmp_path)
    report = tmp_path / "merged.md"
    done = subprocess.run(["bash", str(REPO / "scripts" / "run-rescore.sh"), str(run), "--report", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (run / "report.md").read_bytes() == (evaluation / "report.md").read_bytes()
    assert report.read_text() == merged_report([str(run)]) and "## Paper protocol" in report.read_text()
    usage = subprocess.run(["bash", str(REPO / "scripts" / "run-rescore.sh")], capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 2 and "usage: bash scripts/run-rescore.sh" in usage.stderr
