"""utils/evaluation/predictions.py: round trip, sidecar, and validation errors that name file, line and field."""

from __future__ import annotations

import json

import pytest

from utils.io_utils import DataFormatError
from utils.evaluation.predictions import (
    make_record,
    predictions_meta_path,
    predictions_path,
    read_predictions,
    read_predictions_meta,
    write_predictions,
)


def good(i: int = 0, **changes):
    record = {"id": f"test-{i:05d}", "label": 1, "response_start": 3, "n_response_tokens": 3,
              "token_labels": [0, 1, -100], "scores": {"token": [0.1, 0.9, 0.5]}, "full_score": 0.8}
    record.update(changes)
    return record


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_round_trip_with_sidecar(tmp_path):
    records = [make_record("a", 1, 5, [0, 1], {"token": [0.12345678, 0.9]}, 0.7777777),
               make_record("b", 0, 2, [], {"token": []}, 0.1)]
    assert records[0]["scores"]["token"] == [0.123457, 0.9] and records[0]["full_score"] == 0.777778
    assert records[1]["n_response_tokens"] == 0
    path = write_predictions(tmp_path, "test", records, {"checkpoint": "ckpt", "model_task": "scm"})
    assert path == predictions_path(tmp_path, "test") and path.name == "predictions-test.jsonl"
    assert read_predictions(path, require_scores=["token"], require_full_score=True) == records
    meta = read_predictions_meta(tmp_path, "test")
    assert meta == {"format_version": 1, "checkpoint": "ckpt", "model_task": "scm", "split": "test", "n_records": 2}
    assert predictions_meta_path(tmp_path, "test").name == "predictions-test.meta.json"
    assert read_predictions_meta(tmp_path, "val") == {}


@pytest.mark.parametrize("record, message", [
    ({"label": 1, "n_response_tokens": 0, "full_score": 0.5}, r"line 2: field 'id' is missing"),
    (good(label=2), r"line 2: field 'label' must be 0 or 1, got 2"),
    (good(label=True), r"line 2: field 'label' must be 0 or 1"),
    ({"id": "x", "n_response_tokens": 0, "full_score": 0.5}, r"field 'label' is missing"),
    ({"id": "x", "label": 0, "full_score": 0.5}, r"field 'n_response_tokens' is missing"),
    (good(scores={"token": [0.1, 0.2]}), r"field 'scores.token' must be a list of n_response_tokens=3 .*got 2"),
    (good(scores={"token": [0.1, 0.2, 1.5]}), r"field 'scores.token' must hold probabilities"),
    (good(token_labels=[0, 1]), r"field 'token_labels' must be a list of n_response_tokens=3 labels, got 2"),
    (good(token_labels=[0, 2, 1]), r"field 'token_labels' may only hold -100, 0 or 1"),
    (good(full_score=float("nan")), r"field 'full_score' must be a probability"),
    ({"id": "x", "label": 0, "n_response_tokens": 0}, r"field 'scores' is missing and so is 'full_score'"),
    (good(id="test-00000"), r"line 2: field 'id' repeats 'test-00000'"),
])
def test_read_names_file_line_and_field(tmp_path, record, message):
    path = write_lines(tmp_path / "predictions-test.jsonl", [json.dumps(good(0)), json.dumps(record)])
    with pytest.raises(DataFormatError, match=message) as err:
        read_predictions(path)
    assert str(path) in str(err.value)


def test_line_numbers_count_blank_lines(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(good(0)), "", json.dumps(good(1, label=5))])
    with pytest.raises(DataFormatError, match=r"p.jsonl, line 3: field 'label'"):
        read_predictions(path)


def test_required_scores_and_full_score(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(good(0))])
    with pytest.raises(DataFormatError, match=r"line 1: field 'scores.holistic' is missing \(scorers present: "
                                              r"\['token'\]\)"):
        read_predictions(path, require_scores=["holistic"])
    no_full = good(0)
    del no_full["full_score"]
    write_lines(path, [json.dumps(no_full)])
    with pytest.raises(DataFormatError, match="field 'full_score' is missing"):
        read_predictions(path, require_full_score=True)


def test_empty_missing_and_invalid_files(tmp_path):
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataFormatError, match="empty.jsonl: the predictions file is empty"):
        read_predictions(empty)
    with pytest.raises(FileNotFoundError, match="run the evaluation script"):
        read_predictions(tmp_path / "missing.jsonl")
    broken = write_lines(tmp_path / "broken.jsonl", [json.dumps(good(0)), '{"id": "x", '])
    with pytest.raises(DataFormatError, match="broken.jsonl, line 2: invalid JSON"):
        read_predictions(broken)
    listed = write_lines(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(DataFormatError, match="line 1: expected a JSON object, got list"):
        read_predictions(listed)


def test_write_refuses_invalid_or_empty_and_writes_nothing(tmp_path):
    with pytest.raises(DataFormatError, match=r"predictions-val.jsonl, record 1: field 'label'"):
        write_predictions(tmp_path, "val", [good(0), good(1, label=3)], {})
    with pytest.raises(DataFormatError, match="no predictions to write for split 'val'"):
        write_predictions(tmp_path, "val", [], {})
    with pytest.raises(DataFormatError, match="record 1: field 'id' repeats"):
        write_predictions(tmp_path, "val", [good(0), good(0)], {})
    assert list(tmp_path.iterdir()) == []
