"""utils/evaluation/operating_point.py: operating_point.json from a hand-made summary (what each rule chose, the
served scorer, a rule that chose nothing, the default), read back and checked; written atomically, beside files it
never touches."""

from __future__ import annotations

import json

import pytest

from utils.evaluation.operating_point import (build_operating_point, read_operating_point, record_operating_point,
                                              scorer_points)
from utils.io_utils import DataFormatError
from utils.metrics import partial_protocols


def rec(rid, label, token, holistic):
    return {"id": rid, "label": label, "n_response_tokens": len(token), "token_labels": [0] * len(token),
            "scores": {"token": token, "holistic": holistic}}


# Validation, token scorer: (0.5, 2) separates the classes and stops no benign response; holistic: every token
# scores 0.9, so every point up to k = 2 stops v-b2 (and k = 1 v-b1 too): a 40% budget finds nothing.
VAL = [rec("v-h1", 1, [0.6, 0.6], [0.9, 0.9]), rec("v-h2", 1, [0.7, 0.55, 0.1], [0.9, 0.9, 0.9]),
       rec("v-b1", 0, [0.9], [0.9]), rec("v-b2", 0, [0.2, 0.2], [0.9, 0.9])]
TEST = [rec("t-h1", 1, [0.9], [0.9]), rec("t-h2", 1, [0.9, 0.6], [0.1, 0.1]), rec("t-b1", 0, [0.6, 0.6], [0.9, 0.9]),
        rec("t-b2", 0, [0.1], [0.1])]


def summary(budget=0.4, max_k=2, scorers=("token", "holistic")):
    return {"script": "test.test_qwen_partial", "command": "python -m test.test_qwen_partial --model-path ckpt",
            "model": {"task": "scm"}, "thresholds": [0.5, 0.8], "max_k": max_k,
            "data": {"data_dir": "data/realmix2", "splits": {"val": {"examples": 4}, "test": {"examples": 4}}},
            "partial": {s: partial_protocols(TEST, VAL, s, (0.5, 0.8), max_k=max_k, max_benign_stop_rate=budget)
                        for s in scorers}}


def test_content_pinned():
    content = build_operating_point(summary(), output_dir="runs/eval/scm")
    assert (content["schema"], content["format_version"], content["default"], content["scorer"], content["rule"]) == (
        "scm-operating-point", 1, "leak_free", "token", "delay-k")
    budget = content["points"]["leak_free_budget"]
    assert (budget["theta"], budget["k"], budget["max_benign_stop_rate"], budget["selected_on"]) == (0.5, 2, 0.4, "val")
    assert budget["validation"] == {"macro_f1": 1.0, "harmful_recall": 1.0, "harmful_precision": 1.0,
                                    "benign_stop_rate": 0.0, "mean_share": pytest.approx(5 / 6),
                                    "mean_share_all": pytest.approx(5 / 6), "n_harmful": 2, "n_benign": 2}
    # On test (0.5, 2) stops t-h2 and t-b1.
    assert (budget["test"]["benign_stop_rate"], budget["test"]["harmful_recall"]) == (0.5, 0.5)
    holistic = content["other_scorers"]["holistic"]
    assert "leak_free_budget" not in holistic["points"] and set(holistic["points"]) == {"leak_free", "leak_free_early"}
    assert holistic["unavailable"]["leak_free_budget"].startswith(
        "no (theta, k) of the grid stops at most 40% of the benign val responses (the fewest: 50.00% at theta 0.5, "
        "k 2)")
    assert content["source"] == {
        "data_dir": "data/realmix2", "evaluation_dir": "runs/eval/scm", "driver": "bash scripts/run-scm.sh test",
        "script": "test.test_qwen_partial", "command": "python -m test.test_qwen_partial --model-path ckpt",
        "model_task": "scm", "selected_on": "val", "reported_on": "test", "examples": {"val": 4, "test": 4},
        "limit": None, "thresholds": [0.5, 0.8], "max_k": 2}
    assert scorer_points(content, "holistic")["points"]["leak_free"]["scorer"] == "holistic"
    assert scorer_points(content, "token")["points"] is content["points"] and scorer_points(content, "x") is None


def test_default_rule_and_what_is_not_written():
    budget_first = build_operating_point(summary(), output_dir="e", default="budget")
    assert budget_first["default"] == "leak_free_budget" and "default_note" not in budget_first
    # The holistic scorer alone (a qwen-full run) has no budget point: its default falls back to leak_free.
    holistic = build_operating_point(summary(scorers=("holistic",)), output_dir="e", default="budget")
    assert holistic["scorer"] == "holistic" and holistic["default"] == "leak_free"
    assert holistic["default_note"].startswith("leak_free_budget was asked for as the default but chose no point for "
                                               "the holistic scorer (no (theta, k)")
    assert holistic["unavailable"]["leak_free_budget"] and holistic["other_scorers"] == {}
    # Nothing chosen (no validation split; full detection): nothing to record.
    no_val = {"partial": {"token": partial_protocols(TEST, None, "token", (0.5,), max_k=2)}}
    assert build_operating_point(no_val, output_dir="e") is None
    assert build_operating_point({"partial": {}}, output_dir="e") is None
    with pytest.raises(ValueError, match="unknown default operating point 'best'"):
        build_operating_point(summary(), output_dir="e", default="best")


def test_recorded_atomically_beside_untouched_files_and_read_back(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "scm"}')
    (folder / "model.safetensors").write_bytes(b"\x00weights")
    path = record_operating_point(folder, summary(), output_dir="runs/eval/a")
    assert path == folder / "operating_point.json" and read_operating_point(folder)["default"] == "leak_free"
    again = summary()
    again["data"]["data_dir"] = "data/other"
    record_operating_point(folder, again, output_dir="runs/eval/b")
    second = read_operating_point(folder)
    assert second["source"]["data_dir"] == "data/other" and second["replaces"]["data_dir"] == "data/realmix2"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "operating_point.json"]
    assert (folder / "model.safetensors").read_bytes() == b"\x00weights"
    # A folder that cannot be written (read-only storage) costs a warning, not the evaluation.
    import utils.evaluation.operating_point as module

    def read_only(path, obj):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(module, "write_json", read_only)
    assert record_operating_point(folder, summary(), output_dir="e") is None
    assert "could not write" in caplog.text and "Read-only file system" in caplog.text
    monkeypatch.undo()
    assert read_operating_point(folder)["source"]["data_dir"] == "data/other"
    (folder / "operating_point.json").write_text(json.dumps({"schema": "scm-operating-point", "format_version": 9}))
    with pytest.raises(DataFormatError, match="format_version 9; this version reads 1"):
        read_operating_point(folder)
    assert read_operating_point(tmp_path) is None
