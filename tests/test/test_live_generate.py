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
