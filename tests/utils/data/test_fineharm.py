"""Tests for utils/data/fineharm.py: the FineHarm format is accepted as is, and every malformed input is refused with a
message naming the file, the record and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from utils.data.fineharm import (
    SPLIT_FILES,
    find_split_files,
    load_fineharm,
    load_split,
    response_label,
    validate_example,
)
from utils.io_utils import DataFormatError


def valid_record() -> dict:
    return {
        "prompt": "How do I bake bread?",
        "response": "Sure. Mix flour and water.",
        "sentences": ["Sure.", "Mix flour and water."],
        "sentence_labels": [0, 1],
        "words": [["Sure", "."], ["Mix", "flour", "and", "water", "."]],
        "word_labels": [[0, 0], [1, 1, 0, 1, 0]],
        "meta": {"source": "test"},
    }


def write_folder(folder: Path, records: dict[str, list] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in SPLIT_FILES.items():
        data = (records or {}).get(split, [valid_record()])
        (folder / name).write_text(json.dumps(data))
    return folder


def test_valid_folder_loads_unchanged_with_extra_fields(tmp_path):
    folder = write_folder(tmp_path / "fh")
    data = load_fineharm(folder)
    assert list(data) == ["train", "val", "test"]
    assert data["val"] == [valid_record()]  # extra field "meta" kept
    assert response_label(data["train"][0]) == 1


def test_response_label_is_any_sentence_label():
    record = valid_record()
    record["sentence_labels"] = [0, 0]
    assert response_label(record) == 0
    record["sentence_labels"] = [1, 0]
    assert response_label(record) == 1


def test_find_split_files_maps_split_names_to_fineharm_files(tmp_path):
    folder = write_folder(tmp_path / "fh")
    paths = find_split_files(folder, ["test", "val"])
    assert paths == {"test": folder / "test_new.json", "val": folder / "valid_new.json"}


def test_missing_files_are_listed_with_readme_pointer(tmp_path):
    folder = tmp_path / "fh"
    folder.mkdir()
    (folder / "train_new.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match=r"lacks valid_new\.json, test_new\.json.*FineHarm/README\.md"):
        find_split_files(folder)


def test_missing_folder_names_the_folder_and_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*--input-dir.*FineHarm/README\.md"):
        find_split_files(tmp_path / "nowhere")


def test_unknown_split_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['valid'\]; choose from \['train', 'val', 'test'\]"):
        find_split_files(write_folder(tmp_path / "fh"), ["valid"])


def test_missing_split_file_in_load_split(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train_new\.json.*does not exist"):
        load_split(tmp_path / "train_new.json")


def test_invalid_json_names_file_line_and_fix(tmp_path):
    path = tmp_path / "valid_new.json"
    path.write_text('[{"prompt": "x",\n  oops}]')
    with pytest.raises(DataFormatError, match=r"valid_new\.json: invalid JSON at line 2.*repair the file"):
        load_split(path)


def test_top_level_must_be_a_list(tmp_path):
    path = tmp_path / "test_new.json"
    path.write_text(json.dumps({"data": [valid_record()]}))
    with pytest.raises(DataFormatError, match=r"test_new\.json: the top level must be a JSON list.*, got dict"):
        load_split(path)


def test_record_must_be_an_object(tmp_path):
    path = tmp_path / "train_new.json"
    path.write_text(json.dumps([valid_record(), ["not", "a", "record"]]))
    with pytest.raises(DataFormatError, match=r"train_new\.json, record 1: expected a JSON object .* got list"):
        load_split(path)


def _set(path: tuple, value):
    def mutate(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(key):
    def mutate(record):
        del record[key]

    return mutate


# (mutation of record 1, expected field in the message, expected problem)
BAD_RECORDS = {
    "missing-field": (_delete("words"), "words", r"missing; every record needs prompt, response, sentences"),
    "prompt-not-str": (_set(("prompt",), 5), "prompt", r"expected a string, got int"),
    "empty-prompt": (_set(("prompt",), ""), "prompt", r"is empty or only whitespace"),
    "blank-response": (_set(("response",), "  \n"), "response", r"is empty or only whitespace"),
    "sentences-not-list": (_set(("sentences",), "Sure."), "sentences", r"expected a list of strings, got str"),
    "no-sentences": (lambda r: r.update(sentences=[], sentence_labels=[], words=[], word_labels=[]),
                     "sentences", r"is an empty list"),
    "sentence-not-str": (_set(("sentences", 1), None), r"sentences\[1\]", r"expected a string, got NoneType"),
    "empty-sentence": (_set(("sentences", 0), ""), r"sentences\[0\]", r"is empty or only whitespace"),
    "sentence-labels-length": (_set(("sentence_labels",), [0]), "sentence_labels",
                               r"has 1 labels for 2 sentences; give exactly one 0/1 label per sentence"),
    "sentence-labels-not-list": (_set(("sentence_labels",), 1), "sentence_labels", r"expected a list of 0/1, got int"),
    "sentence-label-2": (_set(("sentence_labels", 0), 2), r"sentence_labels\[0\]", r"expected 0 or 1, got 2"),
    "sentence-label-bool": (_set(("sentence_labels", 1), True), r"sentence_labels\[1\]", r"expected 0 or 1, got True"),
    "sentence-label-float": (_set(("sentence_labels", 1), 1.0), r"sentence_labels\[1\]", r"expected 0 or 1, got 1\.0"),
    "words-length": (_set(("words",), [["Sure", "."]]), "words", r"has 1 word lists for 2 sentences"),
    "words-not-list": (_set(("words",), "Sure ."), "words", r"expected a list \(one list of words per sentence\)"),
    "sentence-words-not-list": (_set(("words", 1), "Mix flour"), r"words\[1\]", r"expected a list of strings, got str"),
    "word-not-str": (_set(("words", 1, 2), 7), r"words\[1\]\[2\]", r"expected a string, got int"),
    "word-labels-outer-length": (_set(("word_labels",), [[0, 0]]), "word_labels", r"has 1 label lists for 2 sentences"),
    "word-labels-length": (_set(("word_labels", 1), [1, 1, 0]), r"word_labels\[1\]",
                           r"has 3 labels for the 5 words of sentence 1; give exactly one 0/1 label per word"),
    "word-labels-not-list": (_set(("word_labels", 0), 0), r"word_labels\[0\]", r"expected a list of 0/1, got int"),
    "word-label-bool": (_set(("word_labels", 1, 0), False), r"word_labels\[1\]\[0\]", r"expected 0 or 1, got False"),
    "word-label-str": (_set(("word_labels", 1, 3), "1"), r"word_labels\[1\]\[3\]", r"expected 0 or 1, got '1'"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_names_file_record_field_and_problem(tmp_path, case):
    mutate, field, problem = BAD_RECORDS[case]
    bad = valid_record()
    mutate(bad)
    path = tmp_path / "valid_new.json"
    path.write_text(json.dumps([valid_record(), bad]))
    with pytest.raises(DataFormatError, match=rf"valid_new\.json, record 1, field '{field}': {problem}"):
        load_split(path)


def test_validate_example_does_not_modify_the_record():
    record = valid_record()
    before = copy.deepcopy(record)
    validate_example(record, 0, "x.json")
    assert record == before


def test_load_fineharm_fails_on_a_bad_later_split(tmp_path):
    bad = valid_record()
    bad["sentence_labels"] = [0, 3]
    folder = write_folder(tmp_path / "fh", {"test": [valid_record(), valid_record(), bad]})
    with pytest.raises(DataFormatError, match=r"test_new\.json, record 2, field 'sentence_labels\[1\]'"):
        load_fineharm(folder)


@pytest.mark.parametrize("meta, message", [
    ({"category": 3}, r"record 0, field 'meta.category': expected a harm category name or null, got 3"),
    ({"category": " "}, r"field 'meta.category'"),
    ("illicit", r"field 'meta': expected an object, got str"),
])
def test_bad_category_names_the_record_and_the_fix(tmp_path, meta, message):
    folder = write_folder(tmp_path / "fh", {"test": [dict(valid_record(), meta=meta)]})
    with pytest.raises(DataFormatError, match=message):
        load_fineharm(folder)
