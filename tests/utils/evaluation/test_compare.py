"""utils/evaluation/compare.py: rows read on the selection split or the evaluated one, the mean ± sd row, the
training columns from the copy beside an evaluation, and the errors that name the fix."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from utils.evaluation import compare
from utils.io_utils import DataFormatError


def _point(theta: float, k: int, val_f1: float, test_f1: float, recall: float, far: float) -> dict:
    return {"theta": theta, "k": k, "selected_on": "val",
            "selection_report": {"macro_f1": val_f1, "harmful_recall": recall + 0.01, "benign_stop_rate": far + 0.01,
                                 "mean_share": 0.4, "mean_share_all": 0.5},
            "report": {"macro_f1": test_f1, "harmful_recall": recall, "far": far,
                       "delay": {"harmful": {"mean_share": 0.3, "mean_share_all": 0.45}}}}


def _evaluation(folder: Path, val_f1: float, test_f1: float) -> Path:
    folder.mkdir(parents=True)
    summary = {"eval_split": "test", "model": {"path": str(folder.parent / "gone")},
               "partial": {"token": {"leak_free": _point(0.6, 6, val_f1, test_f1, 0.9, 0.06),
                                     "leak_free_budget": _point(0.8, 8, val_f1 - 0.05, test_f1 - 0.1, 0.6, 0.015)}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_val_rows_are_the_selection_numbers_and_test_rows_the_report(tmp_path):
    folder = _evaluation(tmp_path / "a" / "scm", 0.92, 0.91)
    (tmp_path / "a" / "training-summary-scm.json").write_text(json.dumps(
        {"data": {"train_examples": 6000}, "result": {"wall_seconds": 3232.1, "eval": {"eval_loss": 0.204}}}))
    val = compare.run_row("arm", folder, "val", "token")
    assert (val["macro_f1"], val["harmful_recall"], val["benign_stops"]) == (0.92, pytest.approx(0.91), pytest.approx(0.07))
    assert val["budget_recall"] == pytest.approx(0.61) and val["train_examples"] == 6000
    test = compare.run_row("arm", folder, "test", "token")
    assert (test["macro_f1"], test["benign_stops"], test["seen_all"]) == (0.91, 0.06, 0.45)
    assert test["budget_recall"] == 0.6 and test["budget_benign_stops"] == 0.015


def test_the_mean_row_has_the_sample_spread_and_the_file_is_written(tmp_path):
    runs = [f"seed {i}={_evaluation(tmp_path / str(i) / 'scm', 0.9, f1)}" for i, f1 in enumerate((0.90, 0.92, 0.88))]
    text = compare.main(compare.CompareArguments(run=runs, output=str(tmp_path / "seeds.md"), split="test",
                                                 mean=True, title="Seeds"))
    assert (tmp_path / "seeds.md").read_text() == text and text.startswith("# Seeds")
    sd = statistics.stdev([0.90, 0.92, 0.88])
    assert f"90.00 ± {100 * sd:.2f}" in text and "mean ± sd (3 runs)" in text
    assert text.count("| seed ") == 3


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="LABEL=FOLDER"):
        compare.parse_runs(["results/realmix2/scm"])
    with pytest.raises(FileNotFoundError, match="no evaluation summary"):
        compare.run_row("x", tmp_path / "nothing", "val", "token")
    folder = _evaluation(tmp_path / "b" / "scm", 0.9, 0.9)
    with pytest.raises(DataFormatError, match="holistic scorer.*token"):
        compare.run_row("x", folder, "val", "holistic")
