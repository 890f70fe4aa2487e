"""SCMModel: heads, losses, causality, cache equivalence and checkpoint round trips on a tiny random backbone."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModel, DynamicCache, LlamaConfig

from model import SCMConfig, SCMModel
from model.modeling_qwen4dual_2CE_w_logic import (LAST_ATTENDED_POOLING, PAPER_POOLING, holistic_index,
                                                   last_token_index, pooling_pad_id)
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


# ------------------------------------------------------------------------------------------- holistic pooling

EOS = PAD = 0


def _right_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    return ids, mask


def test_paper_pooling_skips_an_eos_that_is_the_pad_token():
    # Qwen2.5 / SmolLM2: pad == EOS, so the appended EOS is padding and the head reads the token before it.
    ids, mask = _right_padded([[9, 5, 6, 7, EOS], [9, 5, 6, 7, 8, 3, EOS], [9, 4, EOS]], pad=PAD)
    assert holistic_index(ids, mask, PAPER_POOLING, PAD).tolist() == [3, 5, 1]
    assert holistic_index(ids, mask, LAST_ATTENDED_POOLING, PAD).tolist() == [4, 6, 2]


def test_paper_pooling_reads_the_eos_when_pad_differs():
    pad, eos = 99, 2
    ids, mask = _right_padded([[9, 5, 6, eos], [9, 5, 6, 7, 8, eos]], pad=pad)
    assert holistic_index(ids, mask, PAPER_POOLING, pad).tolist() == [3, 5]
    assert holistic_index(ids, mask, LAST_ATTENDED_POOLING, pad).tolist() == [3, 5]


def test_paper_pooling_without_an_appended_eos_reads_the_last_token():
    ids, mask = _right_padded([[9, 5, 6], [9, 5, 6, 7, 8], [4]], pad=PAD)
    assert holistic_index(ids, mask, PAPER_POOLING, PAD).tolist() == [2, 4, 0]
    # No pad id at all (a tokenizer without pad and EOS): the last attended position.
    assert holistic_index(ids, mask, PAPER_POOLING, None).tolist() == [2, 4, 0]


def test_paper_pooling_ignores_padding_with_another_id():
    # A batch padded with id 0 while the pad id is 151643 (a tiny vocabulary): the mask still marks the padding.
    ids, mask = _right_padded([[9, 5, 6, 151643], [9, 5, 6, 7, 8, 151643]], pad=0)
    assert holistic_index(ids, mask, PAPER_POOLING, 151643).tolist() == [2, 4]


def test_paper_pooling_equals_the_paper_formula_on_right_padded_batches():
    # The paper code's index: argmax over positions of position * (id != pad).
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(2, 12, (5,), generator=generator).tolist()
        rows = [torch.randint(1, 50, (n,), generator=generator).tolist() + [EOS] for n in lengths]
        ids, mask = _right_padded(rows, pad=PAD)
        paper = (torch.arange(ids.shape[1]) * (ids != PAD)).argmax(-1)
        assert torch.equal(holistic_index(ids, mask, PAPER_POOLING, PAD), paper)


def test_unknown_pooling_rule_is_rejected():
    ids, mask = _right_padded([[1, 2]], pad=PAD)
    with pytest.raises(ValueError, match="last-non-pad, last-attended"):
        holistic_index(ids, mask, "mean", PAD)
    with pytest.raises(ValueError, match="holistic_pooling must be one of"):
        SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), holistic_pooling="first")


def test_forward_pools_the_holistic_head_by_the_configured_rule():
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), pooling_pad_token_id=PAD)).eval()
    assert model.config.holistic_pooling == PAPER_POOLING  # the paper's rule is the default for new models
    ids, mask = _right_padded([[9, 5, 6, 7, EOS], [9, 4, EOS]], pad=PAD)
    out = model(ids, attention_mask=mask)
    expected = model.holistic_scorer(out.last_hidden_state[[0, 1], [3, 1]])
    torch.testing.assert_close(out.sequence_logits, expected)
    # The head at the last response token equals the head on the response alone (no EOS, no padding).
    alone = model(torch.tensor([[9, 5, 6, 7]])).sequence_logits
    torch.testing.assert_close(out.sequence_logits[:1], alone, atol=1e-5, rtol=1e-5)
    model.config.holistic_pooling = LAST_ATTENDED_POOLING
    at_eos = model(ids, attention_mask=mask).sequence_logits
    torch.testing.assert_close(at_eos, model.holistic_scorer(out.last_hidden_state[[0, 1], [4, 2]]))


@pytest.mark.parametrize("rule", [PAPER_POOLING, LAST_ATTENDED_POOLING])
def test_pooling_rule_and_pad_id_round_trip(tmp_path, rule):
    config = SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), pooling_pad_token_id=7, holistic_pooling=rule)
    SCMModel(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["holistic_pooling"], saved["pooling_pad_token_id"]) == (rule, 7)
    assert SCMModel.from_pretrained(tmp_path).config.holistic_pooling == rule
    assert AutoModel.from_pretrained(tmp_path).config.holistic_pooling == rule


def test_pooling_pad_id_follows_the_paper_and_the_backbone():
    class Tok:  # pad token first, else EOS, as the paper's training sets it
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    assert [pooling_pad_id(Tok(3, 2)), pooling_pad_id(Tok(None, 2)), pooling_pad_id(Tok(None, None))] == [3, 2, None]
    llama = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=2)
    assert SCMConfig(backbone_config=llama.to_dict()).pooling_pad_token_id == 2


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


@pytest.mark.parametrize("bad", [-1, 2.5, True, "64"])
def test_config_rejects_a_bad_prompt_cut(bad):
    with pytest.raises(ValueError, match="max_prompt_tokens must be None"):
        SCMConfig(max_prompt_tokens=bad)


# ---------------------------------------------------------------------------------------------- category head


def _category_batch():
    input_ids, attention_mask, token_labels, sequence_labels = _batch()
    # row 0 harmful with category 1; row 1 benign (no category)
    return input_ids, attention_mask, token_labels, sequence_labels, torch.tensor([1, -100])


def test_without_a_category_head_the_model_is_the_papers(model, tmp_path):
    out = model(input_ids=_batch()[0], attention_mask=_batch()[1])
    assert out.category_logits is None and out.category_loss is None and not model.has_category_head
    assert not any(name.startswith("category") for name in model.state_dict())
    model.save_pretrained(tmp_path)
    assert SCMModel.from_pretrained(tmp_path).config.category_labels is None


@pytest.mark.parametrize("positions", ["tokens", "pooled"])
def test_category_loss_is_cross_entropy_where_it_learns(model, positions):
    model.eval()
    model.add_category_head(["hate", "illicit", "other"], weight=0.25, positions=positions)
    input_ids, attention_mask, token_labels, sequence_labels, categories = _category_batch()
    with_head = model(input_ids=input_ids, attention_mask=attention_mask, token_labels=token_labels,
                      sequence_labels=sequence_labels, category_labels=categories)
    plain = model(input_ids=input_ids, attention_mask=attention_mask, token_labels=token_labels,
                  sequence_labels=sequence_labels)
    logits = with_head.category_logits
    assert logits.shape == (*input_ids.shape, 3)
    if positions == "tokens":  # every token labelled harmful in row 0
        picked = logits[0][token_labels[0] == 1]
    else:  # the holistic head's position of row 0
        index = holistic_index(input_ids, attention_mask, model.config.holistic_pooling,
                               model.config.pooling_pad_token_id)[0]
        picked = logits[0, index][None]
    expected = torch.nn.functional.cross_entropy(picked.float(), torch.full((len(picked),), 1))
    assert with_head.category_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert with_head.loss.item() == pytest.approx(plain.loss.item() + 0.25 * expected.item(), rel=1e-5)


def test_category_loss_is_zero_without_a_categorised_response(model):
    model.add_category_head(["hate", "illicit"])
    input_ids, attention_mask, token_labels, sequence_labels = _batch()
    out = model(input_ids=input_ids, attention_mask=attention_mask, token_labels=token_labels,
                sequence_labels=sequence_labels, category_labels=torch.tensor([-100, -100]))
    assert out.category_loss.item() == 0.0


def test_category_head_round_trips_and_is_validated(model, tmp_path):
    model.add_category_head(["hate", "illicit"], weight=0.5, positions="pooled")
    with pytest.raises(ValueError, match="already has a category head"):
        model.add_category_head(["hate"])
    model.save_pretrained(tmp_path)
    loaded = SCMModel.from_pretrained(tmp_path)
    assert loaded.config.category_labels == ["hate", "illicit"] and loaded.config.category_positions == "pooled"
    assert torch.equal(loaded.category_scorer.weight, model.category_scorer.weight)
    with pytest.raises(ValueError, match="category_positions must be one of tokens, pooled"):
        SCMConfig(backbone_config=tiny_qwen2_config(), category_labels=["a"], category_positions="everywhere")
    with pytest.raises(ValueError, match="category_labels must be distinct"):
        SCMConfig(backbone_config=tiny_qwen2_config(), category_labels=["a", "a"])


def test_a_detached_category_head_leaves_the_backbone_gradients_alone(model):
    input_ids, attention_mask, token_labels, sequence_labels, categories = _category_batch()
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        fresh = SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict())).eval()
        fresh.add_category_head(["hate", "illicit"], weight=1.0, detach=detach)
        out = fresh(input_ids=input_ids, attention_mask=attention_mask, token_labels=token_labels,
                    sequence_labels=sequence_labels, category_labels=categories)
        fresh.zero_grad()
        out.category_loss.requires_grad_(False)
        torch.autograd.backward(fresh._category_loss(out.category_logits, categories, token_labels,
                                                      torch.tensor([8, 5])))
        grads[detach] = fresh.backbone.layers[-1].mlp.down_proj.weight.grad
        assert fresh.category_scorer.weight.grad is not None and fresh.category_scorer.weight.grad.abs().sum() > 0
    assert grads[False] is not None and grads[False].abs().sum() > 0
    assert grads[True] is None or grads[True].abs().sum() == 0
