"""model/backbone.py: both model classes built on a pretrained backbone keep its attention implementation and get
heads in its dtype; keep_attention's order of preference."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from model import EncoderForSequenceClassification, SCMModel
from model.backbone import keep_attention


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_encoder_keeps_its_attention_implementation(tiny_encoder_backbone, tmp_path, attn):
    model = EncoderForSequenceClassification.from_encoder(str(tiny_encoder_backbone), attn_implementation=attn)
    assert model.encoder.config._attn_implementation == attn
    model.save_pretrained(tmp_path)
    assert EncoderForSequenceClassification.from_pretrained(tmp_path).encoder.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("build", ["scm", "encoder"])
def test_heads_follow_the_backbone_dtype(tiny_causal_backbone, tiny_encoder_backbone, build):
    if build == "scm":
        model = SCMModel.from_backbone(str(tiny_causal_backbone), dtype=torch.bfloat16, alpha=0.3)
        heads = [model.token_scorer, model.holistic_scorer]
        assert model.config.alpha == 0.3  # the config arguments reach the composite config
    else:
        model = EncoderForSequenceClassification.from_encoder(str(tiny_encoder_backbone), dtype=torch.bfloat16)
        heads = [model.classifier]
    assert {p.dtype for head in heads for p in head.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.base_model.parameters()} == {torch.bfloat16}


def test_keep_attention_prefers_the_loaded_then_the_own_then_the_composite_implementation():
    backbone = torch.nn.Module()
    backbone.config = BertConfig(hidden_size=32, num_attention_heads=4)
    backbone.config._attn_implementation = None
    keep_attention(backbone, None)
    assert backbone.config._attn_implementation == "sdpa"  # nothing known: sdpa, never None (bidirectional)
    backbone.config._attn_implementation = None
    keep_attention(backbone, None, "eager")
    assert backbone.config._attn_implementation == "eager"
    keep_attention(backbone, None, "sdpa")
    assert backbone.config._attn_implementation == "eager"  # its own beats the composite's
    keep_attention(backbone, "flash_attention_2", "sdpa")
    assert backbone.config._attn_implementation == "flash_attention_2"
