"""Tests for utils/data/sample_data.py: the sample is deterministic, valid FineHarm, and follows FineHarm's label rules."""

from __future__ import annotations

import hashlib
import json

import pytest

from model.assets import qwen_tokenizer_path
from utils.data_process import DataProcessArguments
from utils.data_process import main as process_main
from utils.data.fineharm import SPLIT_FILES, load_fineharm, response_label
from utils.io_utils import read_jsonl
from utils.data.sample_data import (
    DEFAULT_SIZES,
    ensure_sample,
    generate_sample,
    is_notional,
    parse_args,
    split_words,
    word_labels_for,
    write_sample,
)


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample") / "fineharm-sample", seed=42)


@pytest.fixture(scope="module")
def sample(sample_dir):
    return load_fineharm(sample_dir)  # validates every record with the project's own loader


def test_same_seed_gives_byte_identical_files(tmp_path, sample_dir):
    again = write_sample(tmp_path / "again", seed=42)
    assert digest(again) == digest(sample_dir)
    assert sorted(digest(again)) == ["README.md", "test_new.json", "train_new.json", "valid_new.json"]
    other = write_sample(tmp_path / "other", seed=43)
    assert digest(other)["train_new.json"] != digest(sample_dir)["train_new.json"]


def test_sizes_and_class_balance(sample):
    assert {split: len(records) for split, records in sample.items()} == DEFAULT_SIZES
    for split, records in sample.items():
        kinds = [r["meta"]["kind"] for r in records]
        # a third harmful, a sixth refusals, the rest helpful
        assert kinds.count("harmful") == round(len(records) / 3)
        assert kinds.count("refusal") == round(len(records) / 6)
        assert sum(response_label(r) for r in records) == kinds.count("harmful")


def test_response_label_follows_kind(sample):
    for records in sample.values():
        for record in records:
            assert response_label(record) == (record["meta"]["kind"] == "harmful")


def test_word_labels_follow_fineharm_rules(sample):
    for records in sample.values():
        for record in records:
            assert record["response"] == " ".join(record["sentences"])
            for sentence, label, words, labels in zip(
                record["sentences"], record["sentence_labels"], record["words"], record["word_labels"]
            ):
                assert "".join(words) == "".join(sentence.split())  # words cover the sentence exactly
                if label:
                    assert labels == [int(is_notional(w)) for w in words]
                    assert 1 in labels
                else:
                    assert labels == [0] * len(words)


def test_harmful_responses_often_start_benign(sample):
    harmful = [r for records in sample.values() for r in records if response_label(r)]
    first_benign = sum(r["sentence_labels"][0] == 0 for r in harmful)
    assert first_benign / len(harmful) >= 0.5
    assert any(r["sentence_labels"][0] == 1 for r in harmful)  # and sometimes harmful from the first sentence


def test_no_record_repeats_within_or_across_splits(sample):
    keys = [(r["prompt"], r["response"]) for records in sample.values() for r in records]
    assert len(set(keys)) == len(keys)


def test_split_words_and_notional_rule():
    words = split_words("Don't stop, it's a well-known list.")
    assert words == ["Don't", "stop", ",", "it's", "a", "well", "-", "known", "list", "."]
    # function words (don't, it's, a) and punctuation are 0; the rest of a harmful sentence is 1
    assert word_labels_for(words, harmful=True) == [0, 1, 0, 0, 0, 1, 0, 1, 1, 0]
    assert word_labels_for(words, harmful=False) == [0] * 10


def test_generate_sample_custom_sizes_are_deterministic():
    first = generate_sample(seed=5, sizes={"train": 12, "val": 6, "test": 6})
    assert first == generate_sample(seed=5, sizes={"train": 12, "val": 6, "test": 6})
    assert [len(first[s]) for s in ("train", "val", "test")] == [12, 6, 6]


def test_ensure_sample_writes_once(tmp_path):
    folder = ensure_sample(tmp_path / "s")
    stamp = (folder / "train_new.json").stat().st_mtime_ns
    assert ensure_sample(folder) == folder
    assert (folder / "train_new.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.iterdir()) == sorted({"README.md", *SPLIT_FILES.values()})


def test_refuses_to_replace_a_folder_with_other_files(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"already holds keep\.txt"):
        write_sample(folder)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_cli_rejects_bad_sizes(capsys):
    assert parse_args(["--output-dir", "d", "--seed", "7"]).seed == 7
    with pytest.raises(SystemExit):
        parse_args(["--train-size", "0"])
    assert "--train-size must be >= 1, got 0" in capsys.readouterr().err


def test_processed_sample_labels_harmful_tokens_only_in_harmful_responses(tmp_path, sample_dir, sample):
    out = tmp_path / "processed"
    process_main(DataProcessArguments(output_dir=str(out), tokenizer_path=str(qwen_tokenizer_path()),
                                      input_dir=str(sample_dir), splits=["test"], show_progress=False))
    records = read_jsonl(out / "test.jsonl")
    assert len(records) == len(sample["test"])
    for processed, source in zip(records, sample["test"]):
        response_labels = processed["token_labels"][processed["response_start"]:]
        assert processed["sequence_labels"] == response_label(source)
        assert (1 in response_labels) == bool(response_label(source))
        # the sample's text has single spaces only, so every response token aligns to a word (or is a newline)
        assert response_labels[:-1].count(-100) == 0
    assert json.loads((out / "meta.json").read_text())["splits"]["test"]["harmful"] == 20
