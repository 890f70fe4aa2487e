"""The lexical floor end to end on hand-made text processed with a real tokenizer: train/train_lexical.py,
test/test_lexical.py (full and partial mode) and utils/evaluation/lexical_text.py. Checks that the floor reads the decoded
processed responses, that each prefix's score is the detector's score of that decoded prefix, that reported numbers
are recomputed from the predictions files, and that misuse fails with a message naming the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from model.lexical import LexicalDetector
from test import test_lexical, test_qwen_partial
from train import train_lexical
from utils.evaluation.scoring import prepare_split
from utils.evaluation.lexical_text import prefix_texts, response_text, score_lexical, tokenizer_source
from utils.metrics import classification_report
from utils.evaluation.predictions import read_predictions
from utils.data.processed_data import load_split

from tests.tiny_text_data import process, write_fineharm_folder


@pytest.fixture(scope="module")
def text_data(tmp_path_factory, qwen_tokenizer_dir):
    root = tmp_path_factory.mktemp("lexical-data")
    return process(write_fineharm_folder(root / "fineharm"), root / "processed", qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def floor(tmp_path_factory, text_data):
    out = tmp_path_factory.mktemp("floor") / "lexical"
    train_lexical.main(*train_lexical.parse_args(["--data-dir", str(text_data), "--output-dir", str(out),
                                                  "--min-df", "1"]))
    return out


def test_training_reads_the_decoded_processed_responses(floor, text_data, qwen_tokenizer_dir):
    summary = json.loads((floor / "training_summary.json").read_text())
    config = json.loads((floor / "config.json").read_text())
    assert summary["data"]["examples"] == 32 and summary["model"]["task"] == "lexical"
    assert config["text"]["tokenizer"] == str(qwen_tokenizer_dir.resolve())
    assert summary["validation"]["macro_f1"] == 1.0  # the hand-made words give the label away
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    examples = prepare_split(load_split(text_data, "train"), text_data, "train", tokenizer, 4096, False)
    source = json.loads((text_data.parent / "fineharm" / "train_new.json").read_text())
    # Sentences are joined by "\n" in the processed ids (one newline token after each).
    assert response_text(tokenizer, examples[0]) == "\n".join(source[0]["sentences"]) + "\n"
    vocabulary = set(json.loads((floor / "vocabulary.json").read_text()))
    assert {"bomb", "chocolate cake"} <= vocabulary and "case" not in vocabulary  # prompts are not read


def test_partial_scores_are_the_decoded_prefixes_scores(floor, text_data, qwen_tokenizer_dir, tmp_path):
    out = tmp_path / "partial"
    summary = test_lexical.main(test_lexical.parse_args([
        "--mode", "partial", "--model-path", str(floor), "--data-dir", str(text_data), "--output-dir", str(out),
        "--max-k", "5"]))
    assert summary["model"]["task"] == "lexical" and summary["scorers"] == ["holistic"]
    records = read_predictions(out / "predictions-test.jsonl", require_scores=["holistic"])
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    detector = LexicalDetector.from_pretrained(floor)
    examples = prepare_split(load_split(text_data, "test"), text_data, "test", tokenizer, 4096, False)
    for record, example in zip(records[:4], examples):
        expected = detector.score(prefix_texts(tokenizer, example))
        np.testing.assert_allclose(record["scores"]["holistic"], expected, atol=1e-6)
        assert record["full_score"] == record["scores"]["holistic"][-1]
    # the reported leak-free row is a function of the predictions file
    point = summary["partial"]["holistic"]["leak_free"]
    assert point["report"]["macro_f1"] == pytest.approx(1.0)
    assert (out / "report.md").is_file() and (out / "macro-f1-vs-k-holistic.png").is_file()
    # The floor's chosen points travel with it too, beside its weights.
    written = json.loads((floor / "operating_point.json").read_text())
    assert written["source"]["driver"] == "bash scripts/run-lexical.sh test" and written["scorer"] == "holistic"
    assert (written["points"]["leak_free"]["theta"], written["points"]["leak_free"]["k"]) == (point["theta"],
                                                                                              point["k"])


def test_full_mode_matches_its_predictions(floor, text_data, tmp_path):
    out = tmp_path / "full"
    recorded = floor / "operating_point.json"
    before = recorded.read_bytes() if recorded.is_file() else None
    summary = test_lexical.main(test_lexical.parse_args([
        "--mode", "full", "--model-path", str(floor), "--data-dir", str(text_data), "--output-dir", str(out)]))
    assert summary["partial"] == {} and summary["scorers"] == []
    records = read_predictions(out / "predictions-test.jsonl", require_full_score=True)
    assert all("scores" not in r for r in records)
    report = classification_report([r["label"] for r in records], [int(r["full_score"] >= 0.5) for r in records])
    assert summary["full"]["fixed"]["report"]["macro_f1"] == report["macro_f1"]
    # Full detection chooses no streaming point: whatever the partial run recorded stays.
    assert (recorded.read_bytes() if recorded.is_file() else None) == before


def test_chunked_scoring_equals_one_chunk(floor, text_data, qwen_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    detector = LexicalDetector.from_pretrained(floor)
    examples = prepare_split(load_split(text_data, "val"), text_data, "val", tokenizer, 4096, False)
    small = score_lexical(detector, tokenizer, examples, partial=True, chunk_size=3)
    large = score_lexical(detector, tokenizer, examples, partial=True, chunk_size=10_000)
    assert [s.scores for s in small] == [s.scores for s in large]
    assert [len(s.scores["holistic"]) for s in small] == [e.n_response_tokens for e in examples]


def test_misuse_names_the_fix(floor, text_data, tmp_path):
    with pytest.raises(ValueError, match="use python -m test.test_lexical --mode full|partial"):
        test_qwen_partial.main(test_qwen_partial.parse_args([
            "--model-path", str(floor), "--data-dir", str(text_data), "--output-dir", str(tmp_path / "x")]))
    with pytest.raises(ValueError, match="runs on the CPU only"):
        test_lexical.main(test_lexical.parse_args([
            "--model-path", str(floor), "--data-dir", str(text_data), "--output-dir", str(tmp_path / "y"),
            "--device", "cuda"]))
    with pytest.raises(SystemExit):
        test_lexical.parse_args(["--model-path", "a", "--data-dir", "b", "--output-dir", "c", "--mode", "half"])
    meta = json.loads((text_data / "meta.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "meta.json").write_text(json.dumps({**meta, "tokenizer": str(tmp_path / "gone")}))
    with pytest.raises(FileNotFoundError, match="pass --tokenizer-path FOLDER"):
        tokenizer_source(moved)
    from model.assets import minilm_path

    with pytest.raises(ValueError, match="processed with a tokenizer of 151665 entries"):
        train_lexical.main(*train_lexical.parse_args([
            "--data-dir", str(text_data), "--output-dir", str(tmp_path / "z"), "--tokenizer-path",
            str(minilm_path())]))
