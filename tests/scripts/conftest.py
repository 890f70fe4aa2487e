"""Shared by the tests of the realmix drivers (run-loso.sh, run-realmix.sh): tiny random backbones with the real
SmolLM2 / MiniLM tokenizers (tests/drivers.py runs a driver)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, Qwen2Config, Qwen2Model


@pytest.fixture(scope="session")
def driver_backbones(tmp_path_factory) -> dict[str, str]:
    """Tiny random backbones whose vocabularies fit the real SmolLM2 / MiniLM tokenizers saved beside them."""
    from model.assets import minilm_path, smollm2_path

    root = tmp_path_factory.mktemp("driver-backbones")
    torch.manual_seed(0)
    smol = AutoTokenizer.from_pretrained(smollm2_path())
    Qwen2Model(Qwen2Config(vocab_size=len(smol), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
               ).save_pretrained(root / "causal")
    smol.save_pretrained(root / "causal")
    minilm = AutoTokenizer.from_pretrained(minilm_path())
    BertModel(BertConfig(vocab_size=len(minilm), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=512)).save_pretrained(root / "encoder")
    minilm.save_pretrained(root / "encoder")
    return {"SMOL": str(root / "causal"), "MINILM": str(root / "encoder")}
