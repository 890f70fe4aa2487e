"""Shared fixtures: tiny random backbones saved as HF folders, and tiny processed-data folders.

Tiny means hidden 32, 2 layers, a 512-token vocabulary: every test model builds and trains in well under a second.
The folders carry a real tokenizer (the Qwen2.5 one for causal backbones, MiniLM's WordPiece for encoders) so the
entry points can load them like real checkpoints; the hand-made data only uses ids below the tiny vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, Qwen2Model

from tests.tiny_models import TINY_VOCAB, tiny_qwen2_config, write_categorised_split, write_processed_split

@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine oversubscribed threads cost 10x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    from model.assets import qwen_tokenizer_path

    return qwen_tokenizer_path()


@pytest.fixture(scope="session")
def tiny_causal_backbone(tmp_path_factory, qwen_tokenizer_dir) -> Path:
    """A saved tiny random Qwen2 base model with the Qwen2.5 tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)
    Qwen2Model(tiny_qwen2_config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(qwen_tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_backbone(tmp_path_factory) -> Path:
    """A saved tiny random BERT with MiniLM's WordPiece tokenizer."""
    from model.assets import minilm_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_processed_data(tmp_path_factory) -> Path:
    """A processed-data folder (train/val/test) in the causal layout: no BOS, EOS id 0 appended."""
    folder = tmp_path_factory.mktemp("tiny-data")
    for seed, split, n in ((1, "train", 48), (2, "val", 12), (3, "test", 12)):
        write_processed_split(folder / f"{split}.jsonl", n, seed)
    (folder / "meta.json").write_text(json.dumps({"format_version": 1, "vocab_size": TINY_VOCAB,
                                                  "eos_appended": True, "bos_token_id": None}))
    return folder


@pytest.fixture(scope="session")
def tiny_categorised_data(tmp_path_factory) -> Path:
    """A processed-data folder like ``tiny_processed_data`` whose records carry harm categories (illicit, hate)."""
    folder = tmp_path_factory.mktemp("tiny-categorised")
    for seed, split, n in ((1, "train", 48), (2, "val", 12), (3, "test", 12)):
        write_categorised_split(folder / f"{split}.jsonl", n, seed)
    (folder / "meta.json").write_text(json.dumps({"format_version": 1, "vocab_size": TINY_VOCAB,
                                                  "eos_appended": True, "bos_token_id": None}))
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_data(tmp_path_factory) -> Path:
    """A processed-data folder in the encoder layout: CLS id 101 first, SEP id 102 last."""
    folder = tmp_path_factory.mktemp("tiny-encoder-data")
    for seed, split, n in ((1, "train", 48), (2, "val", 12), (3, "test", 12)):
        write_processed_split(folder / f"{split}.jsonl", n, seed, bos=101, eos=102)
    (folder / "meta.json").write_text(json.dumps({"format_version": 1, "vocab_size": TINY_VOCAB,
                                                  "eos_appended": True, "bos_token_id": 101}))
    return folder
