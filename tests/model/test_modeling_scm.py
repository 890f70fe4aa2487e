"""SCMModel: heads, losses, causality, cache equivalence and checkpoint round trips on a tiny random backbone."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel, DynamicCache, LlamaConfig

from model import SCMConfig, SCMModel
from model.modeling_qwen4dual_2CE_w_logic import last_token_index
from utils.logic_consistency_loss import LogicConsistencyLoss

from tests.tiny_models import tiny_qwen2_config


@pytest.fixture()
def model() -> SCMModel:
    torch.manual_seed(0)
    return SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict())).eval()


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.randint(0, 2, (2, 9))
    labels[:, :3] = -100
    labels[1, 6:] = -100
    return ids, mask, labels, torch.tensor([1, 0])


def test_heads_follow_the_paper(model):
    hidden = model.config.backbone_config.hidden_size
    dropout, linear = model.token_scorer
    assert isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.1
    assert linear.in_features == hidden and linear.out_features == 2 and torch.count_nonzero(linear.bias) == 0
    assert model.holistic_scorer.bias is None and model.holistic_scorer.weight.shape == (2, hidden)
    # Xavier-uniform bound: sqrt(6 / (fan_in + fan_out)); the init is not HF's normal(0, 0.02).
    bound = math.sqrt(6 / (hidden + 2))
    assert model.holistic_scorer.weight.abs().max() <= bound
    assert model.holistic_scorer.weight.std() > 0.05


def test_forward_shapes_and_holistic_head_reads_the_last_real_token(model):
    ids, mask, _, _ = _batch()
    out = model(ids, attention_mask=mask)
    assert out.token_logits.shape == (2, 9, 2) and out.sequence_logits.shape == (2, 2)
    expected = model.holistic_scorer(out.last_hidden_state[1, 5])
    torch.testing.assert_close(out.sequence_logits[1], expected)
    assert last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0]])).tolist() == [1, 2, 0]


def test_loss_is_the_weighted_sum_of_its_parts(model):
    ids, mask, labels, seq = _batch()
    out = model(ids, attention_mask=mask, token_labels=labels, sequence_labels=seq)
    ce = torch.nn.functional.cross_entropy
    token = ce(out.token_logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100)
    holistic = ce(out.sequence_logits, seq)
    logic = LogicConsistencyLoss()(out.sequence_logits, out.token_logits, labels != -100)
    torch.testing.assert_close(out.loss, 0.6 * token + 0.4 * holistic + 1.0 * logic)
    torch.testing.assert_close(out.token_loss, token.detach())
    assert out.logic_loss.item() == pytest.approx(logic.item())


def test_full_detection_baseline_ignores_token_labels():
    torch.manual_seed(0)
    baseline = SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), alpha=0.0, gamma=0.0,
                                  task="qwen-full")).eval()
    ids, mask, labels, seq = _batch()
    out = baseline(ids, attention_mask=mask, token_labels=labels, sequence_labels=seq)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.sequence_logits, seq))


def test_token_scores_are_causal(model):
    ids, _, _, _ = _batch()
    full = model(ids[:1]).token_logits
    prefix = model(ids[:1, :5]).token_logits
    torch.testing.assert_close(full[:, :5], prefix, atol=1e-5, rtol=1e-5)


def test_cached_scoring_equals_uncached(model):
    ids, _, _, _ = _batch()
    with torch.no_grad():
        full = model(ids[:1]).token_logits
        first = model(ids[:1, :4], past_key_values=DynamicCache(), use_cache=True)
        second = model(ids[:1, 4:7], past_key_values=first.cache, use_cache=True)
        third = model(ids[:1, 7:], past_key_values=second.cache, use_cache=True)
    stitched = torch.cat([first.token_logits, second.token_logits, third.token_logits], dim=1)
    torch.testing.assert_close(stitched, full, atol=1e-5, rtol=1e-5)


def test_a_few_steps_reduce_the_loss_and_change_the_parameters(model):
    ids, mask, labels, seq = _batch()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = model(ids, attention_mask=mask, token_labels=labels, sequence_labels=seq).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0] * 0.7
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "holistic_scorer.weight" in changed and "token_scorer.1.weight" in changed
    assert any(n.startswith("backbone.layers.0.") for n in changed)


def test_save_and_load_give_identical_outputs(model, tmp_path):
    ids, mask, _, _ = _batch()
    model.config.theta, model.config.delay_k = 0.7, 3
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loaded in (SCMModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        loaded.eval()
        assert isinstance(loaded, SCMModel)
        assert (loaded.config.theta, loaded.config.delay_k, loaded.config.alpha) == (0.7, 3, 0.6)
        assert loaded.config.id2label == {0: "benign", 1: "harmful"}
        out, again = model(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
        assert torch.equal(out.token_logits, again.token_logits)
        assert torch.equal(out.sequence_logits, again.sequence_logits)


def test_other_causal_backbones_work(tmp_path):
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = SCMModel(SCMConfig(backbone_config=config.to_dict())).eval()
    model.save_pretrained(tmp_path)
    reloaded = SCMModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 128, (1, 6))
    assert reloaded.config.backbone_config.model_type == "llama"
    assert torch.equal(model(ids).token_logits, reloaded(ids).token_logits)


def test_from_backbone_keeps_pretrained_weights(tiny_causal_backbone):
    model = SCMModel.from_backbone(str(tiny_causal_backbone), alpha=0.5)
    backbone = AutoModel.from_pretrained(tiny_causal_backbone)
    assert torch.equal(model.backbone.embed_tokens.weight, backbone.embed_tokens.weight)
    assert model.config.alpha == 0.5


@pytest.mark.parametrize("kwargs, match", [({"alpha": 1.5}, "alpha"), ({"gamma": -1.0}, "gamma"),
                                           ({"scorer": "both"}, "scorer")])
def test_bad_config_values_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), **kwargs)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_from_backbone_stays_causal(tiny_causal_backbone, tmp_path, attn):
    # Regression: PreTrainedModel.__init__ used to reset the backbone's attention implementation to None, and the
    # model then attended bidirectionally during training (token scores saw the future).
    model = SCMModel.from_backbone(str(tiny_causal_backbone), attn_implementation=attn).eval()
    assert model.backbone.config._attn_implementation == attn
    ids = torch.randint(0, 512, (1, 10))
    full = model(ids, attention_mask=torch.ones_like(ids)).token_logits
    prefix = model(ids[:, :6], attention_mask=torch.ones(1, 6, dtype=torch.long)).token_logits
    torch.testing.assert_close(full[:, :6], prefix, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    assert SCMModel.from_pretrained(tmp_path).backbone.config._attn_implementation in ("sdpa", "eager")
    # The hazard this guards against is real: with no implementation set, the prefix scores change.
    model.backbone.config._attn_implementation = None
    leaked = model(ids, attention_mask=torch.ones_like(ids)).token_logits
    assert not torch.allclose(leaked[:, :6], prefix, atol=1e-5)
