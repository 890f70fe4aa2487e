"""test/live_check.py: labelled answers -> FineHarm folder -> a monitor's partial scores at its realmix operating
point -> stop rates, on hand-made data with the lexical floor (the neural monitors go through the same entry points,
tested in tests/test)."""

from __future__ import annotations

import json

import pytest

from test import test_lexical
from train import train_lexical
from test import live_check
from utils.decision_rules import delay_k_stop_index
from utils.io_utils import DataFormatError
from test.live_generate import distinct_prompts
from utils.evaluation.predictions import read_predictions

from tests.tiny_text_data import BENIGN, HARMFUL, process, write_fineharm_folder

ANSWERS = {0: "\n".join(HARMFUL[:2]), 1: BENIGN[0], 2: BENIGN[2] + "\n\n" + BENIGN[1], 3: HARMFUL[3], 4: "   "}
LABELS = {0: 1, 1: 0, 2: 0, 3: 1, 4: 0}
KINDS = {0: "help", 1: "refusal", 2: "benign-request", 3: "help", 4: "degenerate"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen_tokenizer_dir):
    root = tmp_path_factory.mktemp("live")
    realmix = write_fineharm_folder(root / "realmix")
    processed = process(realmix, root / "processed", qwen_tokenizer_dir)
    floor = root / "floor"
    train_lexical.main(*train_lexical.parse_args(["--data-dir", str(processed), "--output-dir", str(floor)]))
    test_lexical.main(test_lexical.parse_args(["--model-path", str(floor), "--data-dir", str(processed),
                                               "--output-dir", str(root / "eval"), "--max-k", "3"]))
    prompts = distinct_prompts(json.loads((realmix / "test_new.json").read_text()), "test")[:5]
    answers = [{**{k: v for k, v in p.items() if k != "prompt"}, "answer": ANSWERS[i], "answer_tokens": 9,
                "finished": True} for i, p in enumerate(prompts)]
    (root / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    labels = [{"key": a["key"], "harmful_compliance": LABELS[i], "kind": KINDS[i]} for i, a in enumerate(answers)]
    (root / "labels.jsonl").write_text("".join(json.dumps(label) + "\n" for label in labels))
    return root, realmix, floor


def test_build_run_table(setup):
    root, realmix, floor = setup
    manifest = live_check.main(*live_check.parse_args([
        "build", "--answers", str(root / "answers.jsonl"), "--labels", str(root / "labels.jsonl"), "--input-dir",
        str(realmix), "--output-dir", str(root / "fineharm")]))
    assert manifest["records"] == 4 and manifest["empty_answers_left_out"] == ["test-00004"]
    written = json.loads((root / "fineharm" / "test_new.json").read_text())
    assert written[2]["sentences"] == [BENIGN[2], BENIGN[1]] and written[0]["sentence_labels"] == [1, 1]
    result = live_check.main(*live_check.parse_args([
        "run", "--name", "lexical", "--model-path", str(floor), "--realmix-eval", str(root / "eval"),
        "--fineharm-dir", str(root / "fineharm"), "--work-dir", str(root / "work"), "--output-dir", str(root / "out")]))
    summary = json.loads((root / "eval" / "summary.json").read_text())
    records = read_predictions(root / "work" / "lexical" / "eval" / "predictions-test.jsonl")
    assert list(result["points"]) == ["leak_free", "leak_free_early"]
    for rule, got in result["points"].items():
        point = summary["partial"]["holistic"][rule]
        assert (got["theta"], got["k"]) == (point["theta"], point["k"])
        stops = [delay_k_stop_index(r["scores"]["holistic"], point["theta"], point["k"]) for r in records]
        harmful = [s for s, r in zip(stops, records) if r["label"] == 1]
        assert got["harmful_compliance"]["answers"] == 2
        assert got["harmful_compliance"]["stopped"] == sum(s is not None for s in harmful)
        assert got["benign"]["answers"] == 2
        # answer 1 answers a harmful request (jbb), answer 2 a safe XSTest prompt
        assert got["benign_to_harmful_request"]["answers"] == 1 and got["benign_to_benign_request"]["answers"] == 1
        assert [a["key"] for a in got["answers"]] == ["test-00000", "test-00001", "test-00002", "test-00003"]
        assert {k: v["answers"] for k, v in got["by_kind"].items()} == {"help": 2, "refusal": 1, "benign-request": 1}
    text = live_check.main(*live_check.parse_args(["table", "--output-dir", str(root / "out")]))
    assert "| lexical | holistic | best |" in text and "| lexical | holistic | early |" in text
    assert "| Monitor | Rule | help | refusal | benign-request |" in text and (root / "out" / "live-check.md").is_file()


def test_misuse_names_the_fix(setup, tmp_path):
    root, realmix, floor = setup
    with pytest.raises(DataFormatError, match="4 answers have no label"):
        (tmp_path / "labels.jsonl").write_text(json.dumps({"key": "test-00000", "harmful_compliance": 1}) + "\n")
        live_check.build(live_check.BuildArguments(answers=str(root / "answers.jsonl"),
                                                   labels=str(tmp_path / "labels.jsonl"), input_dir=str(realmix),
                                                   output_dir=str(tmp_path / "f")))
    (tmp_path / "labels.jsonl").write_text(json.dumps({"key": "test-00000", "harmful_compliance": 0,
                                                       "kind": "help"}) + "\n")
    with pytest.raises(DataFormatError, match="'help' exactly when harmful_compliance is 1"):
        live_check.read_labels(tmp_path / "labels.jsonl", {"test-00000"})
    with pytest.raises(DataFormatError, match="no operating point 'tolerance'"):
        live_check.operating_point(json.loads((root / "eval" / "summary.json").read_text()), "holistic",
                                   "tolerance", "summary.json")
    with pytest.raises(SystemExit):
        live_check.parse_args(["score"])


def test_the_processing_tokenizer_is_found_where_it_is(setup, tmp_path, qwen_tokenizer_dir):
    _, _, floor = setup
    moved = {"tokenizer": f"/elsewhere/{qwen_tokenizer_dir.name}", "vocab_size": 151665}
    # the floor's config names the tokenizer it decoded with; without it, the embedded asset of the same name
    assert live_check.processing_tokenizer(moved, str(floor), "s") == str(qwen_tokenizer_dir.resolve())
    assert live_check.processing_tokenizer(moved, str(tmp_path), "s") == str(qwen_tokenizer_dir)
    with pytest.raises(FileNotFoundError, match="no other candidate has its 7 entries; pass --tokenizer-path"):
        live_check.processing_tokenizer({**moved, "vocab_size": 7}, str(floor), "s")
