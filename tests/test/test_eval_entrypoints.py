"""The evaluation entry points (test/test_*.py) end to end on tiny random checkpoints, plus their shared helpers.

Checks: the files each script writes; reported macro-F1 recomputed from the predictions file; per-prefix scores
equal to a direct forward of the model on that prefix (causality for SCM, per-prefix re-classification for the
encoder); wrong checkpoint kinds, bad flags and bad data fail with messages that say what to do; an interrupted
run leaves no truncated file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from sklearn.metrics import f1_score
from transformers import BertConfig, ModernBertConfig

from model import EncoderClassifierConfig, EncoderForSequenceClassification, SCMConfig, SCMModel
from test import test_modernbert_full, test_modernbert_partial, test_qwen_full, test_qwen_partial
from utils.decision_rules import delay_k_stop_index
from utils.evaluation.scoring import EvalExample, bucketed_batches, iter_prefix_jobs, length_sorted_batches, prepare_example
from utils.io_utils import DataFormatError
from utils.metrics import best_point, earliest_within, sweep_partial
from utils.evaluation.predictions import read_predictions

from tests.tiny_models import TINY_VOCAB, tiny_qwen2_config, write_processed_split

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _save(model, tokenizer_source: Path, folder: Path) -> Path:
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_source / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def scm_checkpoint(tmp_path_factory, tiny_causal_backbone) -> Path:
    torch.manual_seed(0)
    # Pad id = the data's EOS (id 0 in the tiny data), as with Qwen2.5 and SmolLM2.
    model = SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), task="scm", pooling_pad_token_id=0))
    return _save(model, tiny_causal_backbone, tmp_path_factory.mktemp("scm-ckpt"))


@pytest.fixture(scope="module")
def qwen_full_checkpoint(tmp_path_factory, tiny_causal_backbone) -> Path:
    torch.manual_seed(1)
    config = SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), task="qwen-full", alpha=0.0, gamma=0.0)
    return _save(SCMModel(config), tiny_causal_backbone, tmp_path_factory.mktemp("qwen-full-ckpt"))


def _tiny_encoder(kind: str):
    if kind == "bert":
        return BertConfig(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=64)
    return ModernBertConfig(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64, pad_token_id=0, cls_token_id=101,
                            sep_token_id=102, bos_token_id=101, eos_token_id=102, local_attention=16)


@pytest.fixture(scope="module", params=["bert", "modernbert"])
def encoder_checkpoint(request, tmp_path_factory, tiny_encoder_backbone) -> Path:
    torch.manual_seed(2)
    model = EncoderForSequenceClassification(EncoderClassifierConfig(encoder_config=_tiny_encoder(request.param)))
    return _save(model, tiny_encoder_backbone, tmp_path_factory.mktemp(f"{request.param}-ckpt"))


def _args(module, model_path, data_dir, out, *extra):
    return module.parse_args(["--model-path", str(model_path), "--data-dir", str(data_dir),
                              "--output-dir", str(out), *extra])


def _macro_f1(labels, preds) -> float:
    return f1_score(labels, preds, labels=[0, 1], average="macro", zero_division=0)


def test_qwen_partial_scm_end_to_end(scm_checkpoint, tiny_processed_data, tmp_path):
    out = tmp_path / "eval"
    summary = test_qwen_partial.main(_args(test_qwen_partial, scm_checkpoint, tiny_processed_data, out,
                                           "--max-k", "12", "--batch-size", "5"))
    names = {p.name for p in out.iterdir()}
    expected = {"predictions-val.jsonl", "predictions-val.meta.json", "predictions-test.jsonl",
                "predictions-test.meta.json", "summary.json", "report.md", "score-traces.png"}
    for scorer in ("token", "holistic"):
        expected |= {f"macro-f1-vs-k-{scorer}.png", f"stop-histogram-{scorer}.png", f"frontier-{scorer}.png"}
        expected |= {f"metrics-partial-{scorer}-theta{t}.json" for t in ("0.5", "0.6", "0.7", "0.8", "0.9")}
    expected |= {f"metrics-full-theta{t}.json" for t in ("0.5", "0.6", "0.7", "0.8", "0.9")}
    expected.add("recall-vs-benign-stops.png")
    assert names == expected
    assert summary["scorers"] == ["token", "holistic"]
    per_theta = ["paper"] * 5
    chosen = ["leak-free", "leak-free-early", "leak-free-budget"]
    assert [(r["mode"], r["scorer"], r["protocol"]) for r in summary["rows"]] == [
        ("full", None, "fixed"), ("full", None, "leak-free"),
        *[("partial", "token", p) for p in [*chosen, *per_theta]],
        *[("partial", "holistic", p) for p in [*chosen, *per_theta]]]
    assert summary["max_benign_stop_rate"] == 0.02 and summary["arguments"]["max_benign_stop_rate"] == 0.02

    test_records = read_predictions(out / "predictions-test.jsonl", require_scores=["token", "holistic"])
    val_records = read_predictions(out / "predictions-val.jsonl")
    assert [r["id"] for r in test_records] == [f"test-{i:05d}" for i in range(12)]  # data order restored
    labels = [r["label"] for r in test_records]
    # Every per-theta file's paper point: the first k with the best harmful F1 on test, counting labelled tokens
    # only, recomputed from the file with the shared rule and sklearn.
    for theta in (0.5, 0.7, 0.9):
        for scorer in ("token", "holistic"):
            metrics = json.loads((out / f"metrics-partial-{scorer}-theta{theta}.json").read_text())
            masked = [[s if label != -100 else 0.0 for s, label in zip(r["scores"][scorer], r["token_labels"])]
                      for r in test_records]
            by_k = [[int(delay_k_stop_index(m, theta, k) is not None) for m in masked] for k in range(1, 13)]
            harmful = [f1_score(labels, preds, zero_division=0) for preds in by_k]
            k = metrics["paper"]["k"]
            assert k == harmful.index(max(harmful)) + 1 and metrics["paper"]["counting"] == "labelled"
            assert metrics["paper"]["report"]["macro_f1"] == pytest.approx(_macro_f1(labels, by_k[k - 1]), abs=1e-12)
            assert metrics["by_k"]["labelled_tokens"]["test"]["harmful_f1"] == pytest.approx(harmful, abs=1e-12)
    # Leak-free: chosen on the validation file.
    val_sweep = sweep_partial(val_records, "token", (0.5, 0.6, 0.7, 0.8, 0.9), 12)
    chosen, early = best_point(val_sweep), earliest_within(val_sweep, 0.01)
    free = summary["partial"]["token"]["leak_free"]
    assert (free["theta"], free["k"], free["selected_on"]) == (chosen.theta, chosen.k, "val")
    free_early = summary["partial"]["token"]["leak_free_early"]
    assert (free_early["theta"], free_early["k"], free_early["counting"]) == (early.theta, early.k, "all")
    full = json.loads((out / "metrics-full-theta0.5.json").read_text())
    preds = [int(r["full_score"] >= 0.5) for r in test_records]
    assert full["splits"]["test"]["macro_f1"] == pytest.approx(_macro_f1(labels, preds), abs=1e-12)

    # Causality: each prefix's scores equal a direct forward of the model on that prefix alone.
    model = SCMModel.from_pretrained(scm_checkpoint).eval()
    data = [json.loads(line) for line in (tiny_processed_data / "test.jsonl").read_text().splitlines()]
    with torch.no_grad():
        for record, prediction in zip(data[:4], test_records[:4]):
            start = record["response_start"]
            for i in (0, prediction["n_response_tokens"] - 1):
                prefix = torch.tensor([record["input_ids"][:start + i + 1]])
                direct = model(prefix)
                token = torch.softmax(direct.token_logits[0, -1], -1)[1].item()
                holistic = torch.softmax(direct.sequence_logits[0], -1)[1].item()
                assert prediction["scores"]["token"][i] == pytest.approx(token, abs=2e-6)
                assert prediction["scores"]["holistic"][i] == pytest.approx(holistic, abs=2e-6)
            whole = model(torch.tensor([record["input_ids"]]))
            assert prediction["full_score"] == pytest.approx(torch.softmax(whole.sequence_logits[0], -1)[1].item(),
                                                             abs=2e-6)
            assert prediction["token_labels"] == record["token_labels"][start:-1]  # the EOS is not a response token
            # The paper's pooling with pad == EOS: the full-response score is the last response token's holistic score.
            assert prediction["full_score"] == pytest.approx(prediction["scores"]["holistic"][-1], abs=2e-6)
    assert json.loads((out / "predictions-test.meta.json").read_text())["holistic_pooling"] == "last-non-pad"
    report = (out / "report.md").read_text()
    assert "| SCM (" in report and "partial* (token)" in report and "partial* (holistic)" in report


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_partial_evaluation_records_its_operating_point_in_the_checkpoint(scm_checkpoint, tiny_processed_data,
                                                                          tmp_path, monkeypatch):
    from utils import io_utils
    from utils.evaluation.operating_point import record_operating_point
    from utils.metrics import operating_stats, partial_detection

    checkpoint = shutil.copytree(scm_checkpoint, tmp_path / "ckpt")
    (checkpoint / "operating_point.json").unlink(missing_ok=True)  # another test of this module may have written one
    shutil.copytree(tiny_processed_data, tmp_path / "data-a")
    other = shutil.copytree(tiny_processed_data, tmp_path / "data-b")
    for split in ("val", "test"):  # other data: the first 8 examples of each split
        lines = (other / f"{split}.jsonl").read_text().splitlines()[:8]
        (other / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    weights = _hashes(checkpoint)
    monkeypatch.chdir(tmp_path)  # paths as a user types them, relative to where they stand
    summary = test_qwen_partial.main(test_qwen_partial.parse_args([
        "--model-path", "ckpt", "--data-dir", "data-a", "--output-dir", "eval-a", "--max-k", "6"]))
    written = json.loads((checkpoint / "operating_point.json").read_text())
    assert (written["schema"], written["format_version"], written["default"], written["scorer"], written["rule"]) == (
        "scm-operating-point", 1, "leak_free", "token", "delay-k")
    assert written["source"]["data_dir"] == "data-a" and written["source"]["evaluation_dir"] == "eval-a"
    assert written["source"]["driver"] == "bash scripts/run-scm.sh test" and written["replaces"] is None
    assert written["max_benign_stop_rate"] == 0.02 and list(written["other_scorers"]) == ["holistic"]
    assert "unavailable" not in written  # every rule chose a point
    val_records = read_predictions(tmp_path / "eval-a" / "predictions-val.jsonl")
    for scorer, recorded in (("token", written), ("holistic", written["other_scorers"]["holistic"])):
        assert set(recorded["points"]) == {"leak_free", "leak_free_early", "leak_free_budget"}
        for rule in ("leak_free", "leak_free_early", "leak_free_budget"):
            point, entry = summary["partial"][scorer][rule], recorded["points"][rule]
            assert (entry["theta"], entry["k"], entry["rule"], entry["scorer"], entry["selected_on"]) == (
                point["theta"], point["k"], "delay-k", scorer, "val")
            # Validation numbers recomputed from the predictions file with the shared rule; test ones as reported.
            again = operating_stats(partial_detection(val_records, scorer, entry["theta"], entry["k"]))
            assert entry["validation"] == pytest.approx(again) and entry["validation"]["macro_f1"] == pytest.approx(
                point["selection_score"])
            assert entry["test"]["benign_stop_rate"] == point["report"]["far"]
            assert entry["test"]["harmful_recall"] == point["report"]["harmful_recall"]
        assert recorded["points"]["leak_free_budget"]["validation"]["benign_stop_rate"] <= 0.02
    # Only operating_point.json was added: weights, config and tokenizer files are byte for byte what they were.
    after = _hashes(checkpoint)
    assert set(after) == set(weights) | {"operating_point.json"}
    assert {name: after[name] for name in weights} == weights

    # Another evaluation on other data replaces it (the latest wins) and says which data it came from.
    test_qwen_partial.main(test_qwen_partial.parse_args([
        "--model-path", "ckpt", "--data-dir", "data-b", "--output-dir", "eval-b", "--max-k", "6",
        "--max-benign-stop-rate", "1", "--default-operating-point", "budget"]))
    second = json.loads((checkpoint / "operating_point.json").read_text())
    assert second["source"]["data_dir"] == "data-b" and second["source"]["examples"] == {"val": 8, "test": 8}
    assert second["replaces"] == {"data_dir": "data-a", "evaluation_dir": "eval-a",
                                  "written_at": written["written_at"]}
    assert second["default"] == "leak_free_budget" and second["max_benign_stop_rate"] == 1.0
    assert {name: _hashes(checkpoint)[name] for name in weights} == weights
    assert not [p.name for p in checkpoint.iterdir() if p.name.endswith(".tmp")]

    # Full detection chooses no operating point, nor does a run without a validation split: the file stays.
    before = (checkpoint / "operating_point.json").read_bytes()
    test_qwen_full.main(test_qwen_full.parse_args(["--model-path", "ckpt", "--data-dir", "data-a", "--output-dir",
                                                   "eval-full"]))
    test_qwen_partial.main(test_qwen_partial.parse_args(["--model-path", "ckpt", "--data-dir", "data-a",
                                                         "--output-dir", "eval-test", "--splits", "test",
                                                         "--max-k", "3"]))
    assert (checkpoint / "operating_point.json").read_bytes() == before

    # Atomic: a write that fails half-way leaves the previous file whole and no temporary file behind.
    def half_written(obj, handle, **kwargs):
        handle.write('{"schema": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(io_utils.json, "dump", half_written)
    with pytest.raises(KeyboardInterrupt):
        record_operating_point("ckpt", summary, output_dir="eval-a")
    monkeypatch.undo()
    assert (checkpoint / "operating_point.json").read_bytes() == before
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(set(weights) | {"operating_point.json"})


def test_qwen_full_end_to_end(qwen_full_checkpoint, tiny_processed_data, tmp_path):
    out = tmp_path / "eval"
    summary = test_qwen_full.main(_args(test_qwen_full, qwen_full_checkpoint, tiny_processed_data, out,
                                        "--thresholds", "0.5,0.9", "--limit", "7"))
    assert {p.name for p in out.glob("metrics-*.json")} == {"metrics-full-theta0.5.json", "metrics-full-theta0.9.json"}
    assert not list(out.glob("*.png")) and summary["partial"] == {}
    records = read_predictions(out / "predictions-test.jsonl", require_full_score=True)
    assert len(records) == 7 and "scores" not in records[0]
    labels = [r["label"] for r in records]
    for theta in (0.5, 0.9):
        reported = json.loads((out / f"metrics-full-theta{theta}.json").read_text())["splits"]["test"]["macro_f1"]
        assert reported == pytest.approx(_macro_f1(labels, [int(r["full_score"] >= theta) for r in records]))
    assert summary["rows"][0]["model"] == "Qwen-arch baseline" and summary["rows"][0]["protocol"] == "fixed"


def test_qwen_partial_scorer_choice_follows_the_checkpoint(qwen_full_checkpoint, tiny_processed_data, tmp_path):
    summary = test_qwen_partial.main(_args(test_qwen_partial, qwen_full_checkpoint, tiny_processed_data,
                                           tmp_path / "a", "--splits", "test", "--max-k", "5"))
    assert summary["scorers"] == ["holistic"] and summary["partial"]["holistic"]["leak_free"] is None
    assert not (qwen_full_checkpoint / "operating_point.json").exists()  # no validation split: nothing chosen
    with pytest.raises(ValueError, match="token scorer is untrained; use --scorer holistic"):
        test_qwen_partial.main(_args(test_qwen_partial, qwen_full_checkpoint, tiny_processed_data, tmp_path / "b",
                                     "--scorer", "both"))
    with pytest.raises(ValueError, match="--scorer 'tokens' is unknown"):
        test_qwen_partial.main(_args(test_qwen_partial, qwen_full_checkpoint, tiny_processed_data, tmp_path / "c",
                                     "--scorer", "tokens"))


def _direct_encoder_prob(model, ids) -> float:
    with torch.no_grad():
        return torch.softmax(model(torch.tensor([ids])).logits[0], -1)[1].item()


def test_encoder_partial_rescored_prefixes(encoder_checkpoint, tiny_encoder_data, tmp_path):
    out = tmp_path / "eval"
    summary = test_modernbert_partial.main(_args(test_modernbert_partial, encoder_checkpoint, tiny_encoder_data,
                                                 out, "--max-k", "8", "--batch-size", "7", "--buffer-batches", "2",
                                                 "--limit", "6"))
    assert summary["scorers"] == ["holistic"] and (out / "stop-histogram-holistic.png").is_file()
    written = json.loads((encoder_checkpoint / "operating_point.json").read_text())
    assert written["scorer"] == "holistic"
    assert written["source"]["driver"] == "bash scripts/run-modernbert-partial.sh test"
    assert written["source"]["limit"] == 6 and written["other_scorers"] == {} and "leak_free" in written["points"]
    records = read_predictions(out / "predictions-test.jsonl", require_scores=["holistic"], require_full_score=True)
    model = EncoderForSequenceClassification.from_pretrained(encoder_checkpoint).eval()
    data = [json.loads(line) for line in (tiny_encoder_data / "test.jsonl").read_text().splitlines()]
    for record, prediction in zip(data[:3], records[:3]):
        start, ids = record["response_start"], record["input_ids"]
        for i in range(prediction["n_response_tokens"]):
            # prefix = CLS + prompt + response[:i+1] + the SEP the data appended
            expected = _direct_encoder_prob(model, ids[:start + i + 1] + [102])
            assert prediction["scores"]["holistic"][i] == pytest.approx(expected, abs=2e-6)
        assert prediction["full_score"] == pytest.approx(_direct_encoder_prob(model, ids), abs=2e-6)
    labels = [r["label"] for r in records]
    paper = summary["partial"]["holistic"]["paper"]["0.5"]
    preds = [int(delay_k_stop_index(r["scores"]["holistic"], paper["theta"], paper["k"]) is not None)
             for r in records]
    assert paper["report"]["macro_f1"] == pytest.approx(_macro_f1(labels, preds), abs=1e-12)


def test_encoder_full_and_truncation(encoder_checkpoint, tiny_encoder_data, tmp_path):
    out = tmp_path / "eval"
    summary = test_modernbert_full.main(_args(test_modernbert_full, encoder_checkpoint, tiny_encoder_data, out,
                                              "--max-length", "10", "--splits", "test"))
    test_info = summary["data"]["splits"]["test"]
    lines = (tiny_encoder_data / "test.jsonl").read_text().splitlines()
    lengths = [len(json.loads(line)["input_ids"]) for line in lines]
    assert test_info["truncated"] == sum(n > 10 for n in lengths) > 0
    records = read_predictions(out / "predictions-test.jsonl")
    model = EncoderForSequenceClassification.from_pretrained(encoder_checkpoint).eval()
    first = json.loads((tiny_encoder_data / "test.jsonl").read_text().splitlines()[0])
    # Truncated from the right, keeping the final SEP, as in training.
    assert records[0]["full_score"] == pytest.approx(_direct_encoder_prob(model, first["input_ids"][:9] + [102]),
                                                     abs=2e-6)
    labels = [r["label"] for r in records]
    reported = json.loads((out / "metrics-full-theta0.7.json").read_text())["splits"]["test"]["macro_f1"]
    assert reported == pytest.approx(_macro_f1(labels, [int(r["full_score"] >= 0.7) for r in records]))
    assert "Encoder baseline" in (out / "report.md").read_text()


def test_wrong_checkpoint_kind_names_the_right_script(scm_checkpoint, encoder_checkpoint, tiny_processed_data,
                                                      tmp_path):
    with pytest.raises(ValueError, match=r"'scm' checkpoint.*use python -m test.test_qwen_partial"):
        test_modernbert_full.main(_args(test_modernbert_full, scm_checkpoint, tiny_processed_data, tmp_path / "a"))
    with pytest.raises(ValueError, match=r"'encoder-full' checkpoint.*use python -m test.test_modernbert_full"):
        test_qwen_full.main(_args(test_qwen_full, encoder_checkpoint, tiny_processed_data, tmp_path / "b"))
    with pytest.raises(ValueError, match=r"'encoder-full' checkpoint.*test.test_modernbert_partial"):
        test_qwen_partial.main(_args(test_qwen_partial, encoder_checkpoint, tiny_processed_data, tmp_path / "c"))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ValueError, match="is a 'qwen2' model, not a trained monitor"):
        test_qwen_full.main(_args(test_qwen_full, plain, tiny_processed_data, tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match="does not exist; train a model first"):
        test_qwen_full.main(_args(test_qwen_full, tmp_path / "missing", tiny_processed_data, tmp_path / "e"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _data_dir(tmp_path: Path, test_lines: list[str] | None, with_val: bool = True) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"eos_appended": True}))
    if with_val:
        write_processed_split(folder / "val.jsonl", 4, 5)
    if test_lines is not None:
        (folder / "test.jsonl").write_text("".join(line + "\n" for line in test_lines))
    return folder


def _good_line(i: int = 0) -> str:
    return json.dumps({"id": f"t{i}", "input_ids": [30, 31, 32, 33, 0], "token_labels": [-100, 0, 1, 1, -100],
                       "sequence_labels": 1, "response_start": 1})


@pytest.mark.parametrize("lines, error, message", [
    (None, FileNotFoundError, r"test.jsonl not found: process the data first.*scripts/run-data.sh"),
    ([], DataFormatError, r"test.jsonl: the split is empty"),
    ([_good_line(0), json.dumps({"id": "t1", "token_labels": [0], "sequence_labels": 0, "response_start": 0})],
     DataFormatError, r"test.jsonl, line 2: missing field 'input_ids'"),
    ([_good_line(0), json.dumps({"id": "t1", "input_ids": [3, 4], "token_labels": [0, 0], "response_start": 0})],
     DataFormatError, r"test.jsonl, line 2: missing field 'sequence_labels'"),
    ([json.dumps({"id": "t0", "input_ids": [3, 4], "token_labels": [0, 0], "sequence_labels": 0})],
     DataFormatError, r"test.jsonl, line 1: field 'response_start' is missing"),
    ([json.dumps({"id": "t0", "input_ids": [3, 4000], "token_labels": [0, 0], "sequence_labels": 0,
                  "response_start": 0})], DataFormatError, r"token id 4000 does not fit the vocabulary"),
])
def test_bad_data_gives_clear_errors(scm_checkpoint, tmp_path, lines, error, message):
    data = _data_dir(tmp_path, lines)
    with pytest.raises(error, match=message):
        test_qwen_full.main(_args(test_qwen_full, scm_checkpoint, data, tmp_path / "out", "--splits", "test"))


def test_missing_val_split_suggests_splits_test(scm_checkpoint, tmp_path):
    data = _data_dir(tmp_path, [_good_line(0)], with_val=False)
    with pytest.raises(FileNotFoundError, match="or leave the split out with --splits test"):
        test_qwen_full.main(_args(test_qwen_full, scm_checkpoint, data, tmp_path / "out"))


@pytest.mark.parametrize("extra, message", [
    (["--splits", "val,tset"], "unknown split 'tset'"),
    (["--thresholds", "0.5,1.5"], "outside"),
    (["--thresholds", "high"], "'high' is not a number"),
    (["--max-k", "0"], "--max-k must be >= 1"),
    (["--dtype", "int8"], "--dtype 'int8' is unknown"),
    (["--device", "tpu9"], "--device 'tpu9'"),
])
def test_bad_flags(scm_checkpoint, tiny_processed_data, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        test_qwen_full.main(_args(test_qwen_full, scm_checkpoint, tiny_processed_data, tmp_path / "out", *extra))


def test_unknown_flag_suggests_the_closest(capsys):
    with pytest.raises(SystemExit):
        test_qwen_partial.parse_args(["--model-path", "m", "--data-dir", "d", "--output-dir", "o", "--max-kk", "3"])
    assert "did you mean --max-k" in capsys.readouterr().err


def test_interrupted_run_leaves_no_truncated_file(scm_checkpoint, tiny_processed_data, tmp_path, monkeypatch):
    import utils.evaluation.outputs as eval_outputs
    from utils.io_utils import atomic_write, write_json

    def write_then_interrupt(path, obj):
        # Simulate Ctrl-C in the middle of writing one metrics file, through the same atomic writer.
        if Path(path).name == "metrics-partial-token-theta0.7.json":
            with atomic_write(path) as handle:
                handle.write('{"partial": ')
                raise KeyboardInterrupt
        write_json(path, obj)

    monkeypatch.setattr(eval_outputs, "write_json", write_then_interrupt)
    out = tmp_path / "eval"
    with pytest.raises(KeyboardInterrupt):
        test_qwen_partial.main(_args(test_qwen_partial, scm_checkpoint, tiny_processed_data, out, "--max-k", "4"))
    names = sorted(p.name for p in out.iterdir())
    assert "metrics-partial-token-theta0.7.json" not in names and "summary.json" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    # What was written before the interruption is complete.
    assert json.loads((out / "metrics-partial-token-theta0.6.json").read_text())["theta"] == 0.6
    assert len(read_predictions(out / "predictions-test.jsonl")) == 12


def _example(n_prompt: int, n_response: int, suffix=(0,)) -> EvalExample:
    ids = list(range(1, n_prompt + n_response + 1)) + list(suffix)
    return EvalExample(id="x", label=0, input_ids=ids, token_labels=[0] * len(ids), response_start=n_prompt,
                       response_end=n_prompt + n_response, suffix_ids=list(suffix))


def test_batches_are_length_sorted_and_prefix_buffer_is_bounded():
    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    examples = [_example(2, 5), _example(1, 0), _example(3, 2)]
    jobs = list(iter_prefix_jobs(examples))
    assert jobs == [(0, 0, 4), (0, 1, 5), (0, 2, 6), (0, 3, 7), (0, 4, 8), (2, 0, 5), (2, 1, 6)]
    pulled = []

    def stream():
        for job in jobs:
            pulled.append(job)
            yield job

    batches = bucketed_batches(stream(), batch_size=2, buffer_size=3)
    first = next(batches)
    assert len(pulled) == 3 and first == [(0, 2, 6), (0, 1, 5)]  # only one buffer was read
    rest = list(batches)
    assert sorted(job for batch in [first, *rest] for job in batch) == sorted(jobs)
    assert max(len(b) for b in rest) <= 2


def test_prepare_example_truncation_keeps_or_drops_the_suffix():
    record = {"id": "r", "input_ids": [101, 5, 6, 7, 8, 9, 102], "token_labels": [-100, -100, 0, 1, 1, 0, -100],
              "sequence_labels": 1, "response_start": 2}
    kept = prepare_example(record, "f, line 1", 5, eos_appended=True, keep_suffix_on_truncation=True)
    assert kept.input_ids == [101, 5, 6, 7, 102] and kept.token_labels[-1] == -100
    assert (kept.response_start, kept.response_end, kept.truncated) == (2, 4, True)
    plain = prepare_example(record, "f, line 1", 5, eos_appended=True, keep_suffix_on_truncation=False)
    assert plain.input_ids == [101, 5, 6, 7, 8] and plain.response_token_labels() == [0, 1, 1]
    whole = prepare_example(record, "f, line 1", 64, eos_appended=True, keep_suffix_on_truncation=True)
    assert whole.response_token_labels() == [0, 1, 1, 0] and not whole.truncated and whole.suffix_ids == [102]
    # A prompt longer than max_length: an empty response, never stopped.
    empty = prepare_example({**record, "response_start": 5}, "f, line 1", 4, True, False)
    assert empty.n_response_tokens == 0
    with pytest.raises(DataFormatError, match="f, line 1: field 'response_start' = 9 is outside"):
        prepare_example({**record, "response_start": 9}, "f, line 1", 64, True, True)


@pytest.fixture(scope="module")
def category_checkpoint(tmp_path_factory, tiny_causal_backbone) -> Path:
    torch.manual_seed(2)
    model = SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), task="scm", pooling_pad_token_id=0))
    model.add_category_head(["hate", "illicit"])
    return _save(model, tiny_causal_backbone, tmp_path_factory.mktemp("category-ckpt"))


def test_run_scm_test_reports_per_category_numbers(category_checkpoint, tiny_categorised_data, tmp_path):
    out = tmp_path / "eval"
    summary = test_qwen_partial.main(_args(test_qwen_partial, category_checkpoint, tiny_categorised_data, out))
    records = read_predictions(out / "predictions-test.jsonl")
    assert {r["category"] for r in records} == {None, "hate", "illicit"}
    assert all(len(r["category_ids"]) == r["n_response_tokens"] for r in records)
    section = summary["categories"]
    assert section["head_labels"] == ["hate", "illicit"]
    entry = section["by_scorer"]["token"]["leak_free"]
    point = summary["partial"]["token"]["leak_free"]
    assert (entry["theta"], entry["k"]) == (point["theta"], point["k"])
    harmful = [r for r in records if r["label"] == 1]
    assert sum(row["harmful"] for row in entry["per_category"].values()) == len(harmful)
    # recall per category recomputed by hand from the predictions file
    for name, row in entry["per_category"].items():
        members = [r for r in harmful if r["category"] == name]
        stopped = [r for r in members if delay_k_stop_index(r["scores"]["token"], point["theta"], point["k"]) is not None]
        assert row["recall"] == pytest.approx(len(stopped) / len(members))
    named = entry["named_at_stop"]
    assert named is not None and named["responses"] == sum(row["stopped"] for row in entry["per_category"].values())
    report = (out / "report.md").read_text()
    assert "## Harm categories" in report and "named right at the stop" in report
    if named["responses"]:
        assert (out / "categories-confusion-token.png").is_file()


def test_a_checkpoint_without_the_head_on_categorised_data_reports_recall_only(scm_checkpoint, tiny_categorised_data,
                                                                                tmp_path):
    summary = test_qwen_partial.main(_args(test_qwen_partial, scm_checkpoint, tiny_categorised_data, tmp_path / "e"))
    assert summary["categories"]["head_labels"] is None
    assert summary["categories"]["by_scorer"]["token"]["leak_free"]["named_at_stop"] is None
    assert "category_ids" not in read_predictions(tmp_path / "e" / "predictions-test.jsonl")[0]


def test_data_without_categories_has_no_category_section(scm_checkpoint, tiny_processed_data, tmp_path):
    summary = test_qwen_partial.main(_args(test_qwen_partial, scm_checkpoint, tiny_processed_data, tmp_path / "e"))
    assert "categories" not in summary
    assert "category" not in read_predictions(tmp_path / "e" / "predictions-test.jsonl")[0]


@pytest.mark.parametrize("module", [test_qwen_partial, test_qwen_full, test_modernbert_partial, test_modernbert_full])
def test_help_prints(module, capsys):
    # argparse formats help strings with %: a bare "2%" in a help text breaks --help of every evaluation entry point
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--max-benign-stop-rate" in capsys.readouterr().out
