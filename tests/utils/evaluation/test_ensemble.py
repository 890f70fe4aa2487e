"""utils/evaluation/ensemble.py: members' scores averaged record by record, checked to be the same data, and the
folder scored like any evaluation."""

from __future__ import annotations

import json

import pytest

from utils.evaluation.ensemble import EnsembleArguments, main, mean_records
from utils.evaluation.outputs import portable_path
from utils.io_utils import DataFormatError, write_json
from utils.evaluation.predictions import make_record, read_predictions, write_predictions

LABELS = [1, 0, 1, 0, 1, 0]


def _member(folder, token_scores, full_scores, labels=LABELS, scorers=("token",)):
    """An evaluation folder (val and test) whose record i has the given token scores (for every scorer)."""
    for split in ("val", "test"):
        records = [make_record(f"{split}-{i:05d}", y, 2, [0, 1, 1], scores={s: token_scores[i] for s in scorers},
                               full_score=full_scores[i]) for i, y in enumerate(labels)]
        write_predictions(folder, split, records, {"script": "test.test_qwen_partial", "model_task": "scm",
                                                   "scorers": list(scorers)})
    write_json(folder / "summary.json", {"arguments": {"thresholds": "0.5,0.7", "max_k": 3,
                                                       "selection_tolerance": 1.0},
                                         "model": {"task": "scm", "backbone_type": "llama"}})
    return folder


def test_scores_are_the_members_mean_and_the_folder_is_scored(tmp_path):
    # Member a flags the harmful records early and one benign record; member b flags nothing benign.
    a = _member(tmp_path / "a", [[0.9, 0.9, 0.9] if y else [0.1, 0.1, 0.1] for y in LABELS[:-1]] + [[0.9, 0.9, 0.9]],
                [0.9 if y else 0.2 for y in LABELS])
    b = _member(tmp_path / "b", [[0.7, 0.9, 0.9] if y else [0.1, 0.2, 0.3] for y in LABELS],
                [0.7 if y else 0.0 for y in LABELS])
    out = tmp_path / "mean"
    summary = main(EnsembleArguments(runs=[str(a), str(b)], output_dir=str(out)))
    records = read_predictions(out / "predictions-test.jsonl")
    assert records[0]["scores"]["token"] == [0.8, 0.9, 0.9]
    assert records[5]["scores"]["token"] == [0.5, 0.55, 0.6] and records[5]["full_score"] == 0.1
    assert records[1]["full_score"] == 0.1 and [r["label"] for r in records] == LABELS
    # The averaged benign record 5 stays under theta 0.7, so the leak-free point is perfect on both splits.
    point = summary["partial"]["token"]["leak_free"]
    assert point["theta"] == 0.7 and summary["model"]["members"] == [portable_path(a), portable_path(b)]
    assert point["report"]["macro_f1"] == 1.0 and point["k"] == 1
    assert json.loads((out / "summary.json").read_text())["script"] == "utils.evaluation.ensemble"
    assert (out / "report.md").read_text().startswith("# Evaluation") and (out / "frontier-token.png").is_file()


def test_members_that_scored_different_data_are_refused_before_anything_is_written(tmp_path):
    scores, full = [[0.5, 0.5, 0.5]] * 6, [0.5] * 6
    a = _member(tmp_path / "a", scores, full)
    b = _member(tmp_path / "b", scores, full, labels=[1, 1, 1, 0, 1, 0])
    with pytest.raises(DataFormatError, match=r"b/predictions-val.jsonl, record 1: field 'label' differs"):
        main(EnsembleArguments(runs=[str(a), str(b)], output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    c = _member(tmp_path / "c", scores, full, scorers=("token", "holistic"))
    with pytest.raises(DataFormatError, match="scorers .* differ"):
        mean_records([read_predictions(a / "predictions-val.jsonl"), read_predictions(c / "predictions-val.jsonl")],
                     ["a", "c"])
    with pytest.raises(DataFormatError, match="5 records against 6"):
        mean_records([read_predictions(a / "predictions-val.jsonl"), read_predictions(c / "predictions-val.jsonl")[:5]],
                     ["a", "c"])


@pytest.mark.parametrize("runs, match", [(["a"], "at least two"), (["a", "a"], "names a folder twice")])
def test_bad_member_lists_are_errors(runs, match):
    with pytest.raises(ValueError, match=match):
        EnsembleArguments(runs=runs, output_dir="out")
