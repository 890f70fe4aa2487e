"""Logic-consistency loss: a soft version of the rule "harmful response => some harmful token".

The holistic head says how likely the whole response is harmful (p_hol); the token head says, per token, how likely
that token is harmful. The rule ``H -> exists t: T_t`` is relaxed with product fuzzy logic: its truth value is
``P(F) = 1 - p_hol + p_hol * g`` where ``g`` aggregates the token probabilities (max by default, as an "exists").
The loss is ``-log P(F)``, so it is zero when the response is judged benign or when some token carries the harm,
and it grows when the holistic head flags a response in which no token is flagged.

Difference from the paper's code (docs/DEVIATIONS.md). The paper's code multiplies the token probabilities by the
mask and reduces over the whole row, zeros included; its rows are padded to 4,096 tokens and include the prompt.

- ``max`` (the default, used for every reported result): identical. A masked zero never exceeds a probability, so
  the paper's value and this one agree, with any padding.
- ``min``: the paper's is 0 whenever a row has one unlabelled or padded position (always, in practice), so ``g``
  carries no information. Here unlabelled positions get the neutral value 1: the minimum over labelled tokens.
- ``avg``: the paper's divides the sum by the row length (4,096 with its padding). Here it divides by the number of
  labelled tokens, which does not depend on padding.

There is no flag for the paper's ``min``/``avg``: the paper reports ``max`` only, and its ``min``/``avg`` depend on
the padded length, which the project's dynamic padding does not reproduce.
"""

from __future__ import annotations

import torch
from torch import nn

_REDUCES = ("max", "min", "avg")
_REDUCTIONS = ("mean", "sum", "none")


class LogicConsistencyLoss(nn.Module):
    """``-log(1 - p_hol + p_hol * g(p_tok))`` for 2-class sequence and token logits.

    Args:
        n_classes: number of classes of both heads; class 1 is "harmful". Only 2 is meaningful for the rule.
        reduce: how token probabilities are aggregated into ``g``: ``max`` (exists), ``min`` (forall) or ``avg``.
        reduction: how per-example losses are combined: ``mean``, ``sum`` or ``none``.

    Raises:
        ValueError: on an unknown ``reduce`` / ``reduction`` or ``n_classes < 2``.
    """

    def __init__(self, n_classes: int = 2, reduce: str = "max", reduction: str = "mean") -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (class 1 is 'harmful'), got {n_classes}")
        if reduce not in _REDUCES:
            raise ValueError(f"reduce must be one of {_REDUCES}, got {reduce!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.n_classes = n_classes
        self.reduce = reduce
        self.reduction = reduction

    def forward(
        self, sequence_logits: torch.Tensor, token_logits: torch.Tensor, token_mask: torch.Tensor
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            sequence_logits: ``(batch, n_classes)`` holistic logits.
            token_logits: ``(batch, seq, n_classes)`` token logits.
            token_mask: ``(batch, seq)`` bool/0-1 mask of the labelled response tokens (label != -100).

        Returns:
            A scalar for ``mean``/``sum``, else a ``(batch,)`` tensor.
        """
        p_hol = sequence_logits.float().softmax(-1)[:, 1]
        mask = token_mask.to(token_logits.device).float()
        p_tok = token_logits.float().softmax(-1)[..., 1] * mask
        if self.reduce == "max":
            g = p_tok.max(dim=-1).values
        elif self.reduce == "min":
            # Unlabelled positions must not win the min: give them the neutral value 1.
            g = torch.where(mask > 0, p_tok, torch.ones_like(p_tok)).min(dim=-1).values
        else:
            g = p_tok.sum(-1) / mask.sum(-1).clamp(min=1.0)
        truth = 1.0 - p_hol + p_hol * g
        loss = -torch.log(truth.clamp(min=1e-8))
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
