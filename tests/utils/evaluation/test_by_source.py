"""utils/evaluation/by_source.py: the evaluation's operating points broken down by each response's source, joined to
the raw split by position with every label checked."""

from __future__ import annotations

import json

import pytest

from utils.evaluation import by_source
from utils.evaluation.predictions import make_record, write_predictions
from utils.io_utils import DataFormatError

from tests.tiny_text_data import text_record

HARMFUL_SCORES = [0.1, 0.9, 0.9, 0.2]  # stops at index 2 with theta 0.5, k 2: share seen 3/4
BENIGN_SCORES = [0.9, 0.1, 0.9, 0.1]  # a false stop at index 2 too


def _folder(tmp_path, raw):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / "test_new.json").write_text(json.dumps(raw))
    records = [make_record(f"test-{i}", int(r["sentence_labels"][0]), 1, [int(r["sentence_labels"][0])] * 4,
                           {"token": HARMFUL_SCORES if r["sentence_labels"][0] else
                            (BENIGN_SCORES if i == 1 else [0.0] * 4)})
               for i, r in enumerate(raw)]
    run = tmp_path / "run"
    write_predictions(run, "test", records, {"script": "test"})
    point = {"theta": 0.5, "k": 2, "counting": "all"}
    (run / "summary.json").write_text(json.dumps({"eval_split": "test", "partial": {"token": {"leak_free": point}}}))
    return run, raw_dir


def test_per_source_recall_share_and_false_stops(tmp_path):
    raw = [text_record("Q", ["Do harm."], True, {"source": "jbb", "attack": "GCG"}),
           text_record("Q", ["Fine."], False, {"source": "jbb", "attack": "GCG"}),
           text_record("Q", ["Fine."], False, {"source": "xstest", "model": "gpt4"}),
           text_record("Q", ["Do harm."], True, {"source": "xstest", "model": "gpt4"})]
    run, raw_dir = _folder(tmp_path, raw)
    text, data = by_source.by_source(run, raw_dir)
    table = data["rules"]["leak_free"]["sources"]
    assert table["jbb"] == {"harmful": 1, "recall": 1.0, "mean_share": 0.75, "benign": 1, "benign_stops": 1.0}
    assert table["xstest"]["benign_stops"] == 0.0 and table["xstest"]["recall"] == 1.0
    assert "| jbb | 1 | 100.0 | 75.0 | 1 | 100.0 |" in text
    _, by_model = by_source.by_source(run, raw_dir, level="model")
    assert set(by_model["rules"]["leak_free"]["sources"]) == {"jbb/GCG", "xstest/gpt4"}


def test_other_data_is_refused_with_the_fix(tmp_path):
    raw = [text_record("Q", ["Do harm."], True, {"source": "jbb"}), text_record("Q", ["Fine."], False)]
    run, raw_dir = _folder(tmp_path, raw)
    (raw_dir / "test_new.json").write_text(json.dumps(list(reversed(raw))))
    with pytest.raises(DataFormatError, match="record 0 .*pass the --input-dir"):
        by_source.by_source(run, raw_dir)
    (raw_dir / "test_new.json").write_text(json.dumps(raw[:1]))
    with pytest.raises(DataFormatError, match="2 scored responses but 1 raw records"):
        by_source.by_source(run, raw_dir)
