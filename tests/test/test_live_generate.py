"""test/live_generate.py with a tiny random causal LM carrying SmolLM2's tokenizer and chat template: distinct
prompts answered once, keyed by record index, no prompt text written, deterministic, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from test import live_generate
from utils.io_utils import DataFormatError

from tests.tiny_text_data import make_records


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> Path:
    from model.assets import smollm2_path

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def prompts_dir(tmp_path) -> Path:
    records = make_records(5, seed=1)
    records[3]["prompt"] = records[0]["prompt"]  # a repeated prompt is answered once
    (tmp_path / "test_new.json").write_text(json.dumps(records))
    return tmp_path


def _run(prompts_dir: Path, generator: Path, output: Path, *extra: str) -> list[dict]:
    live_generate.main(live_generate.parse_args([
        "--input-dir", str(prompts_dir), "--output-file", str(output), "--generator", str(generator),
        "--max-new-tokens", "4", "--batch-size", "2", "--num-threads", "1", *extra]))
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_answers_are_keyed_deterministic_and_hold_no_prompt(prompts_dir, tiny_generator, tmp_path):
    first = _run(prompts_dir, tiny_generator, tmp_path / "a" / "answers.jsonl")
    second = _run(prompts_dir, tiny_generator, tmp_path / "b" / "answers.jsonl")
    assert [a["key"] for a in first] == ["test-00000", "test-00001", "test-00002", "test-00004"]
    assert first[0]["indices"] == [0, 3] and first == second
    assert all(0 < a["answer_tokens"] <= 4 for a in first)
    records = json.loads((prompts_dir / "test_new.json").read_text())
    text = (tmp_path / "a" / "answers.jsonl").read_text()
    assert not any(r["prompt"] in text for r in records)
    assert first[0]["prompt_sha256"] == live_generate.prompt_sha256(records[0]["prompt"])
    assert [a["requests_harm"] for a in first] == [True, True, False, True]  # jbb, jbb, xstest safe, contrast_
    meta = json.loads((tmp_path / "a" / "answers.meta.json").read_text())
    assert meta["answers"] == 4 and meta["decoding"] == "greedy" and not (tmp_path / "a" / "answers.partial.jsonl")\
        .exists()


def test_resume_keeps_finished_answers_and_refuses_foreign_ones(prompts_dir, tiny_generator, tmp_path):
    full = _run(prompts_dir, tiny_generator, tmp_path / "full.jsonl")
    partial = tmp_path / "resumed.partial.jsonl"
    kept = {**full[1], "answer": "kept from before"}
    partial.write_text(json.dumps(kept) + "\n")
    resumed = _run(prompts_dir, tiny_generator, tmp_path / "resumed.jsonl")
    assert resumed[1]["answer"] == "kept from before" and resumed[0] == full[0] and resumed[3] == full[3]
    partial.write_text(json.dumps({**full[1], "prompt_sha256": "0" * 64}) + "\n")
    with pytest.raises(DataFormatError, match="holds answers to other prompts"):
        _run(prompts_dir, tiny_generator, tmp_path / "resumed.jsonl")


@pytest.fixture()
def prompt_set(tmp_path) -> Path:
    from test.live_prompts import prompt_records

    records = prompt_records()
    chosen = [records[0], records[-1], records[-2]]  # a harmful request and two benign ones
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return path


def _run_prompts(prompt_set: Path, generator: Path, output: Path) -> list[dict]:
    live_generate.main(live_generate.parse_args([
        "--prompts", str(prompt_set), "--output-file", str(output), "--generator", str(generator),
        "--max-new-tokens", "4", "--batch-size", "2", "--num-threads", "1"]))
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_own_prompts_are_keyed_by_id_and_stored(prompt_set, tiny_generator, tmp_path):
    chosen = [json.loads(line) for line in prompt_set.read_text().splitlines()]
    first = _run_prompts(prompt_set, tiny_generator, tmp_path / "a" / "answers.jsonl")
    assert [a["key"] for a in first] == [c["id"] for c in chosen] == ["harm-01", "benign-48", "benign-47"]
    assert [a["prompt"] for a in first] == [c["prompt"] for c in chosen]
    assert [a["requests_harm"] for a in first] == [True, False, False]
    assert first[0]["category"] == "illicit" and first[1]["sounds_dangerous"] is False
    assert first[0]["prompt_sha256"] == live_generate.prompt_sha256(chosen[0]["prompt"]) and "indices" not in first[0]
    assert all(0 < a["answer_tokens"] <= 4 for a in first) and first[0]["source"] == "project"
    assert _run_prompts(prompt_set, tiny_generator, tmp_path / "b" / "answers.jsonl") == first
    # the same decoding as the FineHarm-folder path: the same prompts give the same answers
    records = make_records(3, seed=2)
    for record, prompt in zip(records, chosen):
        record["prompt"] = prompt["prompt"]
    folder = tmp_path / "fineharm"
    folder.mkdir()
    (folder / "test_new.json").write_text(json.dumps(records))
    via_folder = _run(folder, tiny_generator, tmp_path / "c" / "answers.jsonl")
    assert [a["answer"] for a in via_folder] == [a["answer"] for a in first]
    meta = json.loads((tmp_path / "a" / "answers.meta.json").read_text())
    assert meta["input"] == {"prompts": str(prompt_set), "records": 3, "distinct_prompts": 3}
    assert meta["requests_harm"] == 1 and meta["decoding"] == "greedy"


def test_own_prompts_resume_and_misuse(prompt_set, tiny_generator, tmp_path, prompts_dir):
    full = _run_prompts(prompt_set, tiny_generator, tmp_path / "full.jsonl")
    (tmp_path / "resumed.partial.jsonl").write_text(json.dumps({**full[2], "answer": "kept"}) + "\n")
    resumed = _run_prompts(prompt_set, tiny_generator, tmp_path / "resumed.jsonl")
    assert resumed[2]["answer"] == "kept" and resumed[:2] == full[:2]
    with pytest.raises(ValueError, match="exactly one of --input-dir"):
        live_generate.main(live_generate.parse_args([
            "--prompts", str(prompt_set), "--input-dir", str(prompts_dir),
            "--output-file", str(tmp_path / "x.jsonl")]))
    with pytest.raises(ValueError, match="exactly one of --input-dir"):
        live_generate.main(live_generate.parse_args(["--output-file", str(tmp_path / "x.jsonl")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "prompt": "p", "intent": "harmful", "category": "nasty"}) + "\n")
    with pytest.raises(DataFormatError, match="needs a 'category' from illicit"):
        _run_prompts(bad, tiny_generator, tmp_path / "y.jsonl")
