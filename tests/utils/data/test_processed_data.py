"""Tests for utils/data/processed_data.py: loading processed folders and mixing several of them by weight."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from utils.io_utils import DataFormatError
from utils.data.processed_data import (
    check_weights,
    load_training_data,
    mix_sources,
    weighted_indices,
)


def test_weighted_indices_whole_and_fractional_parts():
    assert weighted_indices(4, 1.0, random.Random(0)) == [0, 1, 2, 3]
    assert weighted_indices(3, 2.0, random.Random(0)) == [0, 1, 2, 0, 1, 2]
    half = weighted_indices(10, 0.5, random.Random(0))
    assert len(half) == 5 and len(set(half)) == 5 and half == sorted(half)
    one_and_half = weighted_indices(10, 1.5, random.Random(0))
    assert len(one_and_half) == 15 and one_and_half[:10] == list(range(10))
    # Seeded: the same seed picks the same examples.
    assert weighted_indices(10, 0.3, random.Random(7)) == weighted_indices(10, 0.3, random.Random(7))


def test_mix_sources_counts_and_origin():
    mixed, origin, used = mix_sources([["a1", "a2"], ["b1", "b2", "b3", "b4"]], [2.0, 0.5], seed=1)
    assert used == [4, 2]
    assert mixed[:4] == ["a1", "a2", "a1", "a2"] and set(mixed[4:]) <= {"b1", "b2", "b3", "b4"}
    assert origin == [0, 0, 0, 0, 1, 1]


def test_check_weights_errors():
    assert check_weights(None, 2, "--w") == [1.0, 1.0]
    with pytest.raises(ValueError, match="got 1 weight.*for 2 source"):
        check_weights([1.0], 2, "--w")
    with pytest.raises(ValueError, match="not a positive number"):
        check_weights([1.0, 0.0], 2, "--w")


def test_two_folders_mixed_by_weight(tiny_processed_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_processed_data, other)
    data = load_training_data([str(tiny_processed_data), str(other)], [1.0, 0.5], seed=3)
    assert len(data.train) == 48 + 24 and len(data.val) == 12 + 12
    assert data.sources[1] == {"data_dir": str(other), "weight": 0.5, "train": {"read": 48, "used": 24},
                               "val": {"read": 12, "used": 12}}
    described = data.describe()
    assert described["data_dir"] == [str(tiny_processed_data), str(other)] and len(described["meta"]) == 2
    # One folder keeps the one-folder shape of training_summary.json.
    single = load_training_data(str(tiny_processed_data))
    assert single.describe()["data_dir"] == str(tiny_processed_data) and len(single.train) == 48
    with pytest.raises(ValueError, match="lists a folder twice"):
        load_training_data([str(other), str(other)])


def test_folders_from_different_tokenizers_are_not_mixed(tiny_processed_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_processed_data, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "vocab_size": 999}))
    with pytest.raises(DataFormatError, match="vocab_size: 999 vs 512"):
        load_training_data([str(tiny_processed_data), str(other)])


def test_vocabulary_error_names_the_folder_at_fault(tiny_processed_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_processed_data, other)
    lines = (other / "val.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["input_ids"][0] = 5000
    (other / "val.jsonl").write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    data = load_training_data([str(tiny_processed_data), str(other)])
    with pytest.raises(DataFormatError, match=f"{other}: token id 5000"):
        data.check_vocabulary(512, "model")


def test_folders_cut_differently_serve_the_named_folders_cut(tiny_processed_data, tmp_path):
    response_only = tmp_path / "p0"
    shutil.copytree(tiny_processed_data, response_only)
    meta = json.loads((response_only / "meta.json").read_text())
    (response_only / "meta.json").write_text(json.dumps({**meta, "max_prompt_tokens": 0}))
    data = load_training_data([str(tiny_processed_data), str(response_only)])
    with pytest.raises(DataFormatError, match="different prompt lengths.*--served-prompt-cut-from"):
        data.max_prompt_tokens()
    assert data.max_prompt_tokens(str(response_only)) == 0
    # Named by another spelling of the same path, and the whole-prompt folder (None) can be the served one too.
    assert data.max_prompt_tokens(str(tiny_processed_data) + "/") is None
    with pytest.raises(DataFormatError, match="is not one of the --data-dir folders"):
        data.max_prompt_tokens(str(tmp_path / "elsewhere"))
