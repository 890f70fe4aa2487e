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


# ------------------------------------------------------------------------------------- the project's own prompt set

OWN = [  # (id, intent, category, sounds_dangerous, answer, label, kind)
    ("harm-01", "harmful", "illicit/violent", None, "\n".join(HARMFUL[:2]), 1, "help"),
    ("harm-02", "harmful", "illicit", None, BENIGN[0], 0, "refusal"),
    ("harm-03", "harmful", "illicit", None, HARMFUL[2] + "\n" + BENIGN[2], 0, "compliant-form"),
    ("benign-01", "benign", None, True, HARMFUL[3], 0, "benign-request"),
    ("benign-02", "benign", None, True, BENIGN[3], 0, "benign-request"),
    ("benign-03", "benign", None, False, BENIGN[1], 0, "benign-request"),
]


@pytest.fixture(scope="module")
def own_set(setup):
    from test.live_generate import prompt_sha256

    root = setup[0] / "own"
    root.mkdir()
    prompts = [{"id": key, "prompt": f"Request number {i}: tell me about it.", "intent": intent, "category": category,
                "sounds_dangerous": dangerous} for i, (key, intent, category, dangerous, *_) in enumerate(OWN)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    answers = [{"key": p["id"], "prompt": p["prompt"], "prompt_sha256": prompt_sha256(p["prompt"]),
                "source": "project", "intent": p["intent"], "category": p["category"],
                "sounds_dangerous": p["sounds_dangerous"], "requests_harm": p["intent"] == "harmful",
                "answer": row[4], "answer_tokens": 9, "finished": True} for p, row in zip(prompts, OWN)]
    (root / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    labels = [{"key": row[0], "harmful_compliance": row[5], "kind": row[6], "note": ""} for row in OWN]
    (root / "labels.jsonl").write_text("".join(json.dumps(label) + "\n" for label in labels))
    manifest = live_check.main(*live_check.parse_args([
        "build", "--answers", str(root / "answers.jsonl"), "--labels", str(root / "labels.jsonl"), "--prompts",
        str(root / "prompts.jsonl"), "--output-dir", str(root / "fineharm")]))
    return root, manifest


def test_build_from_the_prompt_set(own_set, setup):
    root, manifest = own_set
    assert manifest["records"] == 6 and manifest["prompt_set"] == "own" and manifest["harmful_compliance"] == 1
    entry = manifest["entries"][3]
    assert (entry["key"], entry["intent"], entry["category"], entry["sounds_dangerous"], entry["requests_harm"]) == \
        ("benign-01", "benign", None, True, False)
    assert manifest["entries"][0]["category"] == "illicit/violent" and manifest["entries"][0]["requests_harm"]
    written = json.loads((root / "fineharm" / "test_new.json").read_text())
    assert written[0]["prompt"] == "Request number 0: tell me about it." and written[0]["sentence_labels"] == [1, 1]
    assert written[2]["sentence_labels"] == [0, 0]
    # the prompt set must be the one the answers were made from; exactly one source of prompts
    changed = [json.loads(line) for line in (root / "prompts.jsonl").read_text().splitlines()]
    changed[1]["prompt"] = "Another text."
    (root / "changed.jsonl").write_text("".join(json.dumps(p) + "\n" for p in changed))
    args = dict(answers=str(root / "answers.jsonl"), labels=str(root / "labels.jsonl"),
                output_dir=str(root / "other"))
    with pytest.raises(DataFormatError, match=r"key harm-02 is not a prompt of .* \(or its text changed"):
        live_check.build(live_check.BuildArguments(**args, prompts=str(root / "changed.jsonl")))
    with pytest.raises(ValueError, match="exactly one of --input-dir"):
        live_check.build(live_check.BuildArguments(**args, prompts=str(root / "prompts.jsonl"),
                                                   input_dir=str(setup[1])))
    with pytest.raises(DataFormatError, match="has no realmix indices; answers to a prompt set are built with "
                                              "--prompts"):
        live_check.build(live_check.BuildArguments(**args, input_dir=str(setup[1])))


def _copy_checkpoint(floor, folder):
    import shutil

    shutil.copytree(floor, folder)
    return folder


def test_run_on_the_prompt_set_at_the_served_and_recorded_points(own_set, setup):
    root, _ = own_set
    floor = setup[2]
    # the floor's realmix evaluation (a partial run with a validation split) recorded its points in the checkpoint
    recorded = json.loads((floor / "operating_point.json").read_text())
    before = (floor / "operating_point.json").read_bytes()
    result = live_check.main(*live_check.parse_args([
        "run", "--name", "lexical", "--model-path", str(floor), "--operating-points",
        "served,leak_free,leak_free_early,budget", "--fineharm-dir", str(root / "fineharm"),
        "--work-dir", str(root / "work"), "--output-dir", str(root / "out")]))
    # scoring the live folder (no validation split) must not replace the checkpoint's calibrated file
    assert (floor / "operating_point.json").read_bytes() == before
    assert result["prompt_set"] == "own" and result["operating_points_from"] is None
    served = result["points"]["served"]
    default = recorded["points"][recorded["default"]]
    assert (served["theta"], served["k"], served["scorer"], served["selection"]) == \
        (default["theta"], default["k"], "holistic", recorded["default"])
    assert "from operating_point.json (leak_free" in served["from"]
    for name in ("leak_free", "leak_free_early"):
        assert (result["points"][name]["theta"], result["points"][name]["k"]) == \
            (recorded["points"][name]["theta"], recorded["points"][name]["k"])
    assert ("budget" in result["points"]) == ("leak_free_budget" in recorded["points"])
    assert ("budget" in result["unavailable_points"]) == ("leak_free_budget" in recorded.get("unavailable", {}))
    records = read_predictions(root / "work" / "lexical" / "eval" / "predictions-test.jsonl")
    assert [r["label"] for r in records] == [1, 0, 0, 0, 0, 0]
    by_point = {}
    for name, got in result["points"].items():
        stops = [delay_k_stop_index(r["scores"]["holistic"], got["theta"], got["k"]) for r in records]
        stopped = by_point[name] = [s is not None for s in stops]
        assert [a["stop_index"] for a in got["answers"]] == stops
        assert got["harmful_compliance"]["answers"] == 1 and got["harmful_compliance"]["stopped"] == stopped[0]
        assert got["benign_to_harmful_request"]["stopped"] == sum(stopped[1:3])  # harmful requests, no substance
        assert got["benign_to_benign_request"]["stopped"] == sum(stopped[3:])
        assert (got["sounds_dangerous"]["answers"], got["sounds_dangerous"]["stopped"]) == (2, sum(stopped[3:5]))
        assert (got["everyday"]["answers"], got["everyday"]["stopped"]) == (1, stopped[5])
        assert got["by_category"]["illicit"] == {**got["by_category"]["illicit"], "answers": 2,
                                                  "harmful_compliance": 0, "stopped": sum(stopped[1:3])}
        shares = [(s + 1) / r["n_response_tokens"] for s, r in zip(stops, records) if s is not None and r["label"]]
        assert got["harmful_compliance"]["mean_share_seen"] == (shares[0] if shares else None)
    text = live_check.main(*live_check.parse_args(["table", "--output-dir", str(root / "out")]))
    assert "Stopped substantive help" in text and "… sounding dangerous" in text
    served_name = f"served ({live_check.RULE_NAMES[recorded['default']]})"  # served (best): the file's leak_free
    assert f"| lexical | holistic | {served_name} | {served['theta']:g} | {served['k']} |" in text
    assert "| Monitor | Rule | illicit | illicit/violent |" in text
    stopped = by_point["served"]
    assert f"| lexical | {served_name} | {sum(stopped[1:3])}/2 [0] | {int(stopped[0])}/1 [1] |" in text  # by category


def test_operating_points_resolve_from_the_summary_or_the_checkpoint(setup, tmp_path):
    root, _, floor = setup
    folder = _copy_checkpoint(floor, tmp_path / "floor")
    content = json.loads((folder / "operating_point.json").read_text())
    content["points"]["leak_free"] = {**content["points"]["leak_free"], "theta": 0.25, "k": 2}
    content["points"].pop("leak_free_budget", None)
    content["unavailable"] = {"leak_free_budget": "no (theta, k) of the grid stops at most 2% of the benign val"}
    (folder / "operating_point.json").write_text(json.dumps(content))
    summary_path = root / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["partial"]["holistic"]["leak_free"] = {"theta": 0.9, "k": 3}
    points, unavailable = live_check.resolve_points(
        ["leak_free", "checkpoint:leak_free", "summary:leak_free_early", "checkpoint:budget", "served"],
        str(folder), "lexical", summary, str(summary_path), None)
    assert (points["leak_free"]["theta"], points["leak_free"]["k"]) == (0.9, 3)  # a bare name: the summary's first
    assert points["leak_free"]["from"].endswith("summary.json (partial.holistic.leak_free)")
    assert (points["checkpoint:leak_free"]["theta"], points["checkpoint:leak_free"]["k"]) == (0.25, 2)
    assert (points["served"]["theta"], points["served"]["k"]) == (0.25, 2)  # the file's default, leak_free
    assert unavailable == {"checkpoint:budget": f"{folder / 'operating_point.json'}: no (theta, k) of the grid stops "
                                                f"at most 2% of the benign val"}
    with pytest.raises(DataFormatError, match="has no operating point 'tolerance' for the holistic scorer"):
        live_check.resolve_points(["checkpoint:tolerance"], str(folder), "lexical", None, None, None)
    with pytest.raises(DataFormatError, match="holds no points for the token scorer"):
        live_check.resolve_points(["leak_free"], str(folder), "lexical", None, None, "token")
    with pytest.raises(ValueError, match="pass --realmix-eval"):
        live_check.resolve_points(["summary:leak_free"], str(folder), "lexical", None, None, None)
    with pytest.raises(ValueError, match="is not served, NAME, summary:NAME or checkpoint:NAME"):
        live_check.resolve_points(["config:leak_free"], str(folder), "lexical", None, None, None)
    with pytest.raises(DataFormatError, match="none of the operating points"):
        live_check.resolve_points(["budget"], str(folder), "lexical", None, None, None)
    (folder / "operating_point.json").unlink()
    with pytest.raises(DataFormatError, match="operating_point.json does not exist"):
        live_check.resolve_points(["leak_free"], str(folder), "lexical", None, None, None)
    with pytest.raises(DataFormatError, match="is not served by the streaming monitor and holds no"):
        live_check.resolve_points(["served"], str(folder), "lexical", None, None, None)


def _scm_points(folder, default):
    """A hand-written operating_point.json (format 1): token points, holistic ones as the other scorer."""
    def point(selection, theta, k, scorer):
        return {"selection": selection, "theta": theta, "k": k, "rule": "delay-k", "scorer": scorer,
                "selected_on": "val", "validation": {"benign_stop_rate": 0.01}}

    content = {"schema": "scm-operating-point", "format_version": 1, "default": default, "scorer": "token",
               "rule": "delay-k",
               "points": {"leak_free": point("leak_free", 0.6, 3, "token"),
                          "leak_free_budget": point("leak_free_budget", 0.7, 4, "token")},
               "other_scorers": {"holistic": {"points": {"leak_free": point("leak_free", 0.4, 2, "holistic")}}},
               "source": {"data_dir": "data/x", "driver": "bash scripts/run-scm.sh test"}, "written_at": "now"}
    (folder / "operating_point.json").write_text(json.dumps(content))


def test_an_scm_checkpoint_serves_its_config_then_its_recorded_default(own_set, tmp_path):
    from model.assets import smollm2_path
    from tests.tiny_checkpoints import build_tiny_scm

    root, _ = own_set
    folder = build_tiny_scm(tmp_path / "scm", smollm2_path(), theta=0.55, delay_k=2)
    served = live_check.served_default(folder, "scm")
    assert (served["theta"], served["k"], served["scorer"], served["selection"]) == (0.55, 2, "token", None)
    assert "training default" in served["from"]
    _scm_points(folder, "leak_free_budget")
    points, _ = live_check.resolve_points(["served", "leak_free"], str(folder), "scm", None, None, None)
    assert (points["served"]["theta"], points["served"]["k"], points["served"]["selection"]) == \
        (0.7, 4, "leak_free_budget")
    assert (points["leak_free"]["theta"], points["leak_free"]["k"], points["leak_free"]["scorer"]) == (0.6, 3, "token")
    holistic, _ = live_check.resolve_points(["leak_free"], str(folder), "scm", None, None, "holistic")
    assert (holistic["leak_free"]["theta"], holistic["leak_free"]["k"]) == (0.4, 2)
    with pytest.raises(ValueError, match="--scorer holistic contradicts the served point"):
        live_check.resolve_points(["served"], str(folder), "scm", None, None, "holistic")
    # the SCM's own entry point scores the answers with the token head at the served point, checkpoint alone
    result = live_check.main(*live_check.parse_args([
        "run", "--name", "scm", "--model-path", str(folder), "--operating-points", "served",
        "--fineharm-dir", str(root / "fineharm"), "--work-dir", str(tmp_path / "work"),
        "--output-dir", str(tmp_path / "out")]))
    records = read_predictions(tmp_path / "work" / "scm" / "eval" / "predictions-test.jsonl")
    stops = [delay_k_stop_index(r["scores"]["token"], 0.7, 4) for r in records]
    assert [a["stop_index"] for a in result["points"]["served"]["answers"]] == stops
    assert result["data"]["tokenizer"] == str(folder) and result["data"]["max_prompt_tokens"] is None
