"""Logic-consistency loss against values computed by hand."""

import math

import pytest
import torch

from utils.logic_consistency_loss import LogicConsistencyLoss


def _logits_for(p: float) -> list[float]:
    """Two-class logits whose softmax gives probability ``p`` to class 1."""
    return [0.0, math.log(p / (1 - p))]


@pytest.fixture()
def batch():
    # Example 0: p_hol = 0.8, labelled token probs 0.1, 0.5 (third position unlabelled, prob 0.9).
    # Example 1: p_hol = 0.25, labelled token probs 0.6, 0.2, 0.4.
    seq = torch.tensor([_logits_for(0.8), _logits_for(0.25)])
    tok = torch.tensor([[_logits_for(0.1), _logits_for(0.5), _logits_for(0.9)],
                        [_logits_for(0.6), _logits_for(0.2), _logits_for(0.4)]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    return seq, tok, mask


def _expected(p_hol: float, g: float) -> float:
    return -math.log(1 - p_hol + p_hol * g)


@pytest.mark.parametrize(
    "reduce, g0, g1",
    [("max", 0.5, 0.6), ("min", 0.1, 0.2), ("avg", 0.3, 0.4)],
)
def test_reduce_modes_match_hand_computation(batch, reduce, g0, g1):
    seq, tok, mask = batch
    per_example = LogicConsistencyLoss(2, reduce=reduce, reduction="none")(seq, tok, mask)
    expected = torch.tensor([_expected(0.8, g0), _expected(0.25, g1)])
    torch.testing.assert_close(per_example, expected, atol=1e-6, rtol=1e-6)
    mean = LogicConsistencyLoss(2, reduce=reduce, reduction="mean")(seq, tok, mask)
    total = LogicConsistencyLoss(2, reduce=reduce, reduction="sum")(seq, tok, mask)
    assert mean.item() == pytest.approx(expected.mean().item(), abs=1e-6)
    assert total.item() == pytest.approx(expected.sum().item(), abs=1e-6)


def test_max_value_pinned(batch):
    seq, tok, mask = batch
    # -(log(1 - .8 + .8 * .5) + log(1 - .25 + .25 * .6)) / 2 = -(log .6 + log .9) / 2
    value = LogicConsistencyLoss()(seq, tok, mask).item()
    assert value == pytest.approx(0.30809, abs=1e-5)


def test_unlabelled_positions_never_satisfy_the_rule(batch):
    seq, tok, _ = batch
    nothing_labelled = torch.zeros(2, 3, dtype=torch.bool)
    per_example = LogicConsistencyLoss(reduction="none")(seq, tok, nothing_labelled)
    # g = 0 for every example, so the loss is -log(1 - p_hol).
    torch.testing.assert_close(per_example, torch.tensor([-math.log(0.2), -math.log(0.75)]))


def test_loss_is_clamped_when_rule_is_violated_with_certainty():
    seq = torch.tensor([[-100.0, 100.0]])
    tok = torch.tensor([[[100.0, -100.0]]])
    value = LogicConsistencyLoss()(seq, tok, torch.ones(1, 1, dtype=torch.bool))
    assert value.item() == pytest.approx(-math.log(1e-8), rel=1e-4)


def test_gradient_flows_to_both_heads(batch):
    seq, tok, mask = batch
    seq = seq.clone().requires_grad_()
    tok = tok.clone().requires_grad_()
    LogicConsistencyLoss()(seq, tok, mask).backward()
    assert seq.grad.abs().sum() > 0 and tok.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [({"reduce": "median"}, "reduce"), ({"reduction": "avg"}, "reduction"),
                                           ({"n_classes": 1}, "n_classes")])
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LogicConsistencyLoss(**kwargs)


def test_default_max_is_the_papers_reduction_also_with_padding(batch):
    # The paper's code reduces over the mask-multiplied probabilities of the whole (padded) row. For max that is the
    # project's value: the zeros of unlabelled and padded positions never exceed a probability.
    seq, tok, mask = batch
    padded_tok = torch.cat([tok, torch.tensor([[_logits_for(0.95)] * 4] * 2)], dim=1)  # padding scored high
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    paper_g = (padded_tok.softmax(-1)[..., 1] * padded_mask).max(-1).values
    torch.testing.assert_close(paper_g, torch.tensor([0.5, 0.6]))
    for t, m in ((tok, mask), (padded_tok, padded_mask)):
        per_example = LogicConsistencyLoss(reduction="none")(seq, t, m)
        torch.testing.assert_close(per_example, torch.tensor([-math.log(0.6), -math.log(0.9)]))


def test_min_and_avg_differ_from_the_papers_zero_including_reductions(batch):
    # Documented deviation: the paper's min over mask-multiplied probabilities is 0 whenever a row has an unlabelled
    # or padded position, and its avg divides by the row length. Example 0 (third position unlabelled):
    # paper min g = 0 -> loss -log(0.2) = 1.609; project min g = 0.1 -> -log(0.28) = 1.273.
    # paper avg g = (0.1 + 0.5 + 0) / 3 = 0.2 -> -log(0.36) = 1.022; project avg g = 0.3 -> -log(0.44) = 0.821.
    seq, tok, mask = batch
    minimum = LogicConsistencyLoss(reduce="min", reduction="none")(seq, tok, mask)[0].item()
    average = LogicConsistencyLoss(reduce="avg", reduction="none")(seq, tok, mask)[0].item()
    assert (minimum, average) == (pytest.approx(1.27297, abs=1e-5), pytest.approx(0.82098, abs=1e-5))
