"""Tests for utils/annotation/agreement.py on hand-made FineHarm records."""

from __future__ import annotations

import json

import pytest
from sklearn.metrics import cohen_kappa_score

from utils.annotation.agreement import AgreementArguments, compare, labelled_spans, main

REFERENCE = {
    "prompt": "p", "response": "Sure. Mix it now.",
    "sentences": ["Sure.", "Mix it now."], "sentence_labels": [0, 1],
    "words": [["Sure", "."], ["Mix", "it", "now", "."]], "word_labels": [[0, 0], [1, 0, 1, 0]],
}


def test_spans_are_response_characters():
    sentences, words = labelled_spans(REFERENCE)
    assert sentences == {(0, 5): 0, (6, 17): 1}
    assert words == {(0, 4): 0, (4, 5): 0, (6, 9): 1, (10, 12): 0, (13, 16): 1, (16, 17): 0}


def test_agreement_kappa_per_class_and_coverage():
    candidate = {**REFERENCE, "sentence_labels": [1, 1],
                 # "now." as one word does not align with the reference's "now" + "."
                 "words": [["Sure", "."], ["Mix", "it", "now."]], "word_labels": [[1, 0], [1, 1, 1]]}
    benign = {**REFERENCE, "prompt": "q", "sentence_labels": [0, 0], "word_labels": [[0, 0], [0, 0, 0, 0]]}
    result = compare([REFERENCE, benign], [candidate])
    assert result["responses"] == {"benign": {"reference": 1, "kept": 0, "kept_share": 0.0},
                                   "harmful": {"reference": 1, "kept": 1, "kept_share": 1.0}}
    sentence, word = result["sentence"], result["word"]
    assert sentence["confusion_reference_by_candidate"] == [[0, 1], [0, 1]] and sentence["agreement"] == 0.5
    assert word["reference_total"] == 6 and word["aligned"] == 4 and word["coverage"] == pytest.approx(4 / 6)
    # aligned words: Sure (0 vs 1), . (0 vs 0), Mix (1 vs 1), it (0 vs 1)
    assert word["confusion_reference_by_candidate"] == [[1, 2], [0, 1]]
    assert word["per_reference_class"]["benign"] == {"reference": 3, "same": 1, "agreement": pytest.approx(1 / 3)}
    assert word["cohen_kappa"] == pytest.approx(cohen_kappa_score([0, 0, 1, 0], [1, 0, 1, 1]), abs=1e-6)


def test_main_writes_numbers_and_command_only(tmp_path):
    for name, records in (("ref", [REFERENCE]), ("cand", [REFERENCE])):
        (tmp_path / name).mkdir()
        for file in ("train_new.json", "valid_new.json", "test_new.json"):
            (tmp_path / name / file).write_text(json.dumps(records))
    out = tmp_path / "res" / "agreement.json"
    result = main(AgreementArguments(reference=str(tmp_path / "ref"), candidate=str(tmp_path / "cand"),
                                     output=str(out), name="self"))
    assert result["word"]["agreement"] == 1.0 and result["word"]["aligned"] == 18
    written = out.read_text() + out.with_suffix(".md").read_text()
    assert "Mix" not in written and "Sure" not in written  # no text from the data
    assert "| word | 18 / 18 | 100.00 | 1.0000 | 100.00 | 100.00 |" in out.with_suffix(".md").read_text()
