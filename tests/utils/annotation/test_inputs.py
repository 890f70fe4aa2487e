"""Tests for utils/annotation/inputs.py: formats, presets, label values and located errors."""

from __future__ import annotations

import csv
import json

import pytest

from utils.annotation.inputs import InputProblem, InputRecord, field_map, iter_file, parse_label


def _read(path, preset="prompt-response-label", **overrides):
    return list(iter_file(path, field_map(preset, **overrides)))


def test_jsonl_with_labels_and_located_problems(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "p1", "response": "r1", "label": 1}),
        "",
        json.dumps({"prompt": "p2", "response": "r2", "label": "safe"}),
        "{not json",
        json.dumps({"prompt": "p4", "response": "  ", "label": 0}),
        json.dumps({"prompt": "p5", "response": "r5", "label": "maybe"}),
        json.dumps({"prompt": "p6", "response": "r6"}),
    ]) + "\n")
    items = _read(path)
    good = [i for i in items if isinstance(i, InputRecord)]
    assert [(r.prompt, r.label, r.where) for r in good] == [("p1", 1, f"{path}, line 1"), ("p2", 0, f"{path}, line 3")]
    problems = [str(i) for i in items if isinstance(i, InputProblem)]
    assert problems[0].startswith(f"{path}, line 4: invalid JSON")
    assert problems[1] == f"{path}, line 5: field 'response' is empty; drop the record or fill in the text"
    assert f"{path}, line 6: field 'label' = 'maybe' is not a label" in problems[2]
    assert f"{path}, line 7: field 'label' (the response label) is missing" in problems[3]


def test_is_safe_preset_inverts_booleans_but_not_words(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps([{"prompt": "p", "response": "r", "is_safe": True},
                                {"prompt": "p", "response": "r2", "is_safe": False},
                                {"prompt": "p", "response": "r3", "is_safe": "unsafe"}]))
    assert [r.label for r in _read(path, "prompt-response-is_safe")] == [0, 1, 1]
    assert _read(path, "prompt-response-is_safe")[1].where == f"{path}, record 1"


def test_completion_preset_and_field_overrides(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"question": "q", "completion": "c", "verdict": "harmful", "uid": 7, "part": "dev"}))
    (record,) = _read(path, "prompt-completion-label", prompt="question", label="verdict", id="uid", split="part")
    assert (record.prompt, record.response, record.label, record.record_id, record.split) == ("q", "c", 1, "7", "val")


def test_messages_preset_takes_last_assistant_turn_and_user_turn_before_it(tmp_path):
    path = tmp_path / "in.jsonl"
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"}]
    path.write_text(json.dumps({"messages": chat, "label": 0}) + "\n"
                    + json.dumps({"messages": chat[:2], "label": 0}) + "\n")
    record, problem = _read(path, "messages")
    assert (record.prompt, record.response) == ("u2", "a2")
    assert str(problem) == f"{path}, line 2: field 'messages' has no assistant turn; the last assistant turn is the " \
                           f"response"


def test_csv_with_json_lists_and_fineharm_fields(tmp_path):
    path = tmp_path / "in.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "response", "sentences", "sentence_labels"])
        writer.writerow(["p", "A. B.", json.dumps(["A.", "B."]), json.dumps([0, 1])])
        writer.writerow(["p", "A.", "not a list", "[0]"])
    record, problem = _read(path, "fineharm")
    assert (record.sentences, record.sentence_labels, record.label) == (["A.", "B."], [0, 1], 1)
    assert str(problem).startswith(f"{path}, line 3: field 'sentences' must be a list")


def test_fineharm_folder_keeps_its_splits(tmp_path):
    record = {"prompt": "p", "response": "r", "sentences": ["r"], "sentence_labels": [0], "words": [["r"]],
              "word_labels": [[0]]}
    for name in ("train_new.json", "test_new.json"):
        (tmp_path / name).write_text(json.dumps([record]))
    items = _read(tmp_path, "fineharm")
    assert [(r.split, r.label) for r in items] == [("train", 0), ("test", 0)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of train_new.json"):
        _read(tmp_path / "empty", "fineharm")
    with pytest.raises(FileNotFoundError, match="nope' does not exist"):
        _read(tmp_path / "nope", "fineharm")


def test_parquet_through_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"], "label": [True]}), path)
    (record,) = _read(path)
    assert (record.prompt, record.label, record.where) == ("p", 1, f"{path}, row 0")


def test_unknown_suffix_and_bad_mapping(tmp_path):
    path = tmp_path / "in.xml"
    path.write_text("<x/>")
    with pytest.raises(InputProblem, match="unknown file type '.xml'"):
        _read(path)
    with pytest.raises(ValueError, match="name the prompt and response fields"):
        field_map("prompt-response-label", prompt="")
    with pytest.raises(ValueError, match="--preset 'nope' is unknown"):
        field_map("nope")


def test_label_values():
    assert [parse_label(v, "harmful", "w", "f") for v in (1, 0, True, "yes", "No", "TOXIC", "benign", 1.0)] == \
        [1, 0, 1, 1, 0, 1, 0, 1]
    assert [parse_label(v, "safe", "w", "f") for v in (1, False, "true", "harmful")] == [0, 1, 0, 1]
    with pytest.raises(InputProblem, match="w: field 'f' = 2 is not a label"):
        parse_label(2, "harmful", "w", "f")
