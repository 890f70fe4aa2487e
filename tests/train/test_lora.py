"""train/lora.py: adapters on the chosen blocks only, and merged weights score exactly as the adapted model."""

from __future__ import annotations

import pytest
import torch

from model import SCMConfig, SCMModel
from tests.tiny_models import tiny_qwen2_config
from train.lora import add_lora_adapters, lora_target_modules, merge_lora_adapters


def _tiny_scm() -> SCMModel:
    torch.manual_seed(0)
    return SCMModel(SCMConfig(backbone_config=tiny_qwen2_config()))


def test_targets_are_the_linear_layers_of_the_chosen_blocks():
    names = lora_target_modules(_tiny_scm(), first_block=1)
    assert len(names) == 7  # q, k, v, o, gate, up, down of block 1
    assert all(name.startswith("backbone.layers.1.") for name in names)
    with pytest.raises(ValueError, match="leaves no block of 2"):
        lora_target_modules(_tiny_scm(), first_block=2)


def test_only_adapters_and_heads_train():
    model, trainable = add_lora_adapters(_tiny_scm(), rank=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert all("lora_" in n or "token_scorer" in n or "holistic_scorer" in n for n in names)
    assert any("token_scorer" in n for n in names) and any("holistic_scorer" in n for n in names)
    assert sum("lora_A" in n for n in names) == 14  # 7 linear layers x 2 blocks


def test_merged_model_scores_as_the_adapted_one_and_saves_as_a_plain_checkpoint(tmp_path):
    model, _ = add_lora_adapters(_tiny_scm(), rank=4)
    torch.manual_seed(3)
    with torch.no_grad():  # adapters start as a no-op (lora_B = 0): give them and the heads a real update
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    model.eval()
    ids = torch.randint(20, 500, (2, 9))
    with torch.no_grad():
        adapted = model(input_ids=ids)
        base_only = model.get_base_model()
        with model.disable_adapter():
            without = model(input_ids=ids).token_logits
    assert (adapted.token_logits - without).abs().max() > 1e-3  # the adapters matter
    merged = merge_lora_adapters(model)
    assert type(merged) is SCMModel and merged is base_only
    merged.save_pretrained(tmp_path / "ckpt")
    reloaded = SCMModel.from_pretrained(tmp_path / "ckpt").eval()
    assert set(reloaded.state_dict()) == set(_tiny_scm().state_dict())  # no lora_ or base_layer keys
    with torch.no_grad():
        again = reloaded(input_ids=ids)
    torch.testing.assert_close(again.token_logits, adapted.token_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.sequence_logits, adapted.sequence_logits, atol=1e-5, rtol=1e-5)


def test_a_plain_model_is_left_alone():
    model = _tiny_scm()
    assert merge_lora_adapters(model) is model
    with pytest.raises(ValueError, match="--lora-rank must be positive"):
        add_lora_adapters(model, rank=0)
