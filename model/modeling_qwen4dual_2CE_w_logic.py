"""SCM: a causal-LM backbone with a token scorer and a holistic scorer (the paper's dual-head model).

The file name is the paper repository's; the model works over any causal backbone that ``AutoModel`` builds
(Qwen2 as in the paper, Llama/SmolLM2 as the embedded default). Because the backbone is causal, the token score at
position t depends only on the prefix up to t, so one forward pass over a finished response gives the judgement of
every prefix, and a KV cache lets a stream be scored one token at a time (see ``serve/monitor.py``).

Loss: ``alpha * CE_tok + (1 - alpha) * CE_hol + gamma * L_logic``. SCM uses alpha=0.6, gamma=1; the Qwen
full-detection baseline is the same class with alpha=0, gamma=0 (holistic cross-entropy only).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from model.backbone import build_on_backbone, keep_attention
from utils.logic_consistency_loss import LogicConsistencyLoss

LABEL_NAMES = ("benign", "harmful")
# Where the holistic head reads the sequence (``SCMConfig.holistic_pooling``):
# - "last-non-pad", the paper's: the last attended position whose id is not the pad id. Qwen2.5's and SmolLM2's pad
#   token is their EOS, so the EOS that data processing appends counts as padding and the head reads the last
#   response token before it (a final "\n").
# - "last-attended": the last attended position, the EOS itself (``--holistic-pooling last-attended`` trains so).
PAPER_POOLING = "last-non-pad"
LAST_ATTENDED_POOLING = "last-attended"
POOLING_RULES = (PAPER_POOLING, LAST_ATTENDED_POOLING)
# Where the optional category head learns (``SCMConfig.category_positions``): "tokens", every token labelled harmful
# in a harmful response (so that a stop at any token can name a category), or "pooled", the holistic head's position.
CATEGORY_POSITIONS = ("tokens", "pooled")


def check_category_fields(labels: list[str] | None, weight: float, positions: str) -> None:
    """Validate the category head's config fields (labels may be None: no head).

    Raises:
        ValueError: labels that are not distinct non-empty names, a negative weight or an unknown position rule.
    """
    if labels is not None and (not labels or any(not isinstance(name, str) or not name for name in labels)
                               or len(set(labels)) < len(labels)):
        raise ValueError(f"category_labels must be distinct non-empty names, got {labels!r}")
    if weight < 0:
        raise ValueError(f"category_weight must be >= 0, got {weight}")
    if positions not in CATEGORY_POSITIONS:
        raise ValueError(f"category_positions must be one of {', '.join(CATEGORY_POSITIONS)}, got {positions!r}")


class SCMConfig(PreTrainedConfig):
    """Configuration of an SCM checkpoint: the backbone's config plus everything the heads and the loss need.

    A checkpoint directory therefore rebuilds the whole model from its path alone (``SCMModel.from_pretrained``).

    Attributes:
        backbone_config: config of the causal backbone (any ``AutoConfig`` model type).
        alpha: weight of the token cross-entropy; ``1 - alpha`` weighs the holistic cross-entropy.
        gamma: weight of the logic-consistency loss.
        logic_reduce: aggregation of token probabilities in the logic loss (max, min, avg).
        token_dropout: dropout before the token scorer.
        theta: default harmful-token threshold used at inference (kept so a checkpoint carries its operating point).
        delay_k: default delay-k (stop when this many response tokens have been flagged).
        scorer: which head scores prefixes at inference by default: ``token`` or ``holistic``.
        task: ``scm`` or ``qwen-full`` (what the checkpoint was trained as; evaluation scripts check it).
        holistic_pooling: where the holistic head reads a sequence (:func:`holistic_index`): ``last-non-pad`` (the
            paper's, default) or ``last-attended``.
        pooling_pad_token_id: the id ``last-non-pad`` treats as padding (training sets the tokenizer's pad token,
            else its EOS, as the paper's code does); None takes the backbone config's ``pad_token_id``, and when
            that is None too, no id counts as padding.
        category_labels: the harm categories the optional category head predicts (``--category-head``; None: no
            head, the paper's model). A stop names the most likely one at the stopping token.
        category_weight: weight of the category cross-entropy in the loss.
        category_positions: where the category head learns: ``tokens`` or ``pooled`` (:data:`CATEGORY_POSITIONS`).
        category_detach: train the category head on detached hidden states, so that its loss cannot move the
            backbone away from what detection needs (the head then reads the detector's own features).
        max_prompt_tokens: how many tokens of ``prompt + "\\n\\n"`` the training data kept (the data's
            ``--max-prompt-tokens``; 0: the response alone after BOS; None: whole prompts, the paper's). Training
            records it and the streaming runtime cuts prompts the same way, so a monitor trained on the last 64
            prompt tokens is not served 2,000-token jailbreak templates it never saw.
    """

    model_type = "scm"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2")}

    backbone_config: dict | PreTrainedConfig | None = None
    alpha: float = 0.6
    gamma: float = 1.0
    logic_reduce: str = "max"
    token_dropout: float = 0.1
    theta: float = 0.5
    delay_k: int = 1
    scorer: str = "token"
    task: str = "scm"
    holistic_pooling: str = PAPER_POOLING
    pooling_pad_token_id: int | None = None
    max_prompt_tokens: int | None = None
    category_labels: list[str] | None = None
    category_weight: float = 0.5
    category_positions: str = "tokens"
    category_detach: bool = False

    def __post_init__(self, **kwargs):
        if not self.id2label or len(self.id2label) != 2:
            kwargs.setdefault("id2label", dict(enumerate(LABEL_NAMES)))
        super().__post_init__(**kwargs)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.scorer not in ("token", "holistic"):
            raise ValueError(f"scorer must be 'token' or 'holistic', got {self.scorer!r}")
        if self.holistic_pooling not in POOLING_RULES:
            raise ValueError(f"holistic_pooling must be one of {', '.join(POOLING_RULES)}, got "
                             f"{self.holistic_pooling!r}")
        if self.max_prompt_tokens is not None and (isinstance(self.max_prompt_tokens, bool)
                                                   or not isinstance(self.max_prompt_tokens, int)
                                                   or self.max_prompt_tokens < 0):
            raise ValueError(f"max_prompt_tokens must be None (whole prompts) or an integer >= 0, got "
                             f"{self.max_prompt_tokens!r}")
        if self.category_labels is not None:
            self.category_labels = list(self.category_labels)
        check_category_fields(self.category_labels, self.category_weight, self.category_positions)
        if self.pooling_pad_token_id is None and self.backbone_config is not None:
            backbone = self.backbone_config
            self.pooling_pad_token_id = (backbone.get("pad_token_id") if isinstance(backbone, dict)
                                         else getattr(backbone, "pad_token_id", None))

    def get_text_config(self, decoder=None, encoder=None):  # noqa: D401 - HF hook
        """The backbone's config is the text config (generation, cache and attention code look here)."""
        return self.backbone_config


@dataclass
class SCMOutput(ModelOutput):
    """Outputs of :class:`SCMModel`.

    ``token_logits`` is ``(batch, seq, 2)``, ``sequence_logits`` is ``(batch, 2)``, ``category_logits`` (a checkpoint
    with a category head only) is ``(batch, seq, n_categories)``, the holistic head at the position
    :func:`holistic_index` picks under the config's ``holistic_pooling`` rule.
    The three loss parts are detached copies for logging. ``cache`` is the backbone's KV cache (newer transformers
    name it so; the field name is the same on every version).
    """

    loss: torch.Tensor | None = None
    token_logits: torch.Tensor | None = None
    sequence_logits: torch.Tensor | None = None
    token_loss: torch.Tensor | None = None
    holistic_loss: torch.Tensor | None = None
    logic_loss: torch.Tensor | None = None
    category_logits: torch.Tensor | None = None
    category_loss: torch.Tensor | None = None
    cache: Any = None
    last_hidden_state: torch.Tensor | None = None


@lru_cache(maxsize=None)
def _cache_kwarg(backbone_class: type) -> str:
    """Name of the KV-cache argument of a backbone's forward.

    transformers renamed ``past_key_values`` to ``cache`` (5.2x); supporting both keeps one code path for the
    versions on CPU machines and on the GPU machine.
    """
    params = inspect.signature(backbone_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def backbone_cache_output(output: Any) -> Any:
    """The KV cache held by a backbone output, whichever name this transformers version gives it."""
    # Look up keys rather than attributes: reading the deprecated name prints a warning on newer versions.
    keys = output.keys() if hasattr(output, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys:
            return output[name]
    return None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (works for right and left padding).

    Args:
        attention_mask: ``(batch, seq)`` 0/1 mask.

    Returns:
        ``(batch,)`` long tensor.
    """
    seq = attention_mask.shape[-1]
    positions = torch.arange(seq, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values.clamp(min=0)


def holistic_index(
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor,
    rule: str = PAPER_POOLING,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """The position each row's holistic head reads.

    ``last-non-pad`` (the paper's): the last attended position whose id is not ``pad_token_id``. With right
    padding this is the paper code's ``argmax(arange * (input_ids != pad))``; considering the attention mask too
    keeps it right when a batch is padded with another id. A row with no such position (only pad ids), no ids
    (``inputs_embeds``) or no pad id falls back to the last attended position. ``last-attended``: the last
    attended position, whatever its id.

    Args:
        input_ids: ``(batch, seq)`` ids, or None.
        attention_mask: ``(batch, seq)`` 0/1 mask.
        rule: one of :data:`POOLING_RULES`.
        pad_token_id: the id counted as padding by ``last-non-pad``.

    Returns:
        ``(batch,)`` long tensor.

    Raises:
        ValueError: an unknown rule.
    """
    if rule not in POOLING_RULES:
        raise ValueError(f"holistic pooling rule must be one of {', '.join(POOLING_RULES)}, got {rule!r}")
    fallback = last_token_index(attention_mask)
    if rule == LAST_ATTENDED_POOLING or input_ids is None or pad_token_id is None:
        return fallback
    real = attention_mask.bool() & (input_ids != pad_token_id)
    positions = torch.arange(real.shape[-1], device=real.device).expand_as(real)
    last_real = torch.where(real, positions, torch.full_like(positions, -1)).max(-1).values
    return torch.where(last_real >= 0, last_real, fallback)


def pooling_pad_id(tokenizer: Any) -> int | None:
    """The id the paper's code treats as padding for a tokenizer: its pad token, else its EOS (None if neither)."""
    for token_id in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if token_id is not None:
            return int(token_id)
    return None


class SCMModel(PreTrainedModel):
    """Dual-head streaming content monitor over a causal backbone.

    Heads: ``token_scorer`` = Dropout + Linear(hidden, 2) at every position; ``holistic_scorer`` =
    Linear(hidden, 2, bias=False) on the last real token. Both Xavier-uniform initialised with zero bias. With
    ``config.category_labels`` a third head, ``category_scorer`` = Linear(hidden, n_categories), names the harm
    category at every position (:meth:`add_category_head`); without it the model is the paper's.
    """

    config_class = SCMConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # Reports per-loss values to hf-mtask-trainer (see train/training.py).
    supports_report_metrics = True

    def __init__(self, config: SCMConfig, backbone: PreTrainedModel | None = None) -> None:
        # PreTrainedModel.__init__ may reset the sub-config's attention implementation (model/backbone.py).
        requested = (backbone.config if backbone is not None else config.backbone_config)._attn_implementation
        super().__init__(config)
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        hidden = config.backbone_config.hidden_size
        self.token_scorer = nn.Sequential(nn.Dropout(config.token_dropout), nn.Linear(hidden, 2))
        self.holistic_scorer = nn.Linear(hidden, 2, bias=False)
        self.logic_loss_fn = LogicConsistencyLoss(2, reduce=config.logic_reduce, reduction="mean")
        if config.category_labels:
            self.category_scorer = nn.Linear(hidden, len(config.category_labels))
        self.post_init()
        keep_attention(self.backbone, requested, config._attn_implementation)

    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads are ours; the backbone's modules are dispatched to its own _init_weights by HF.
        if module is self.token_scorer[1] or module is self.holistic_scorer or module is getattr(
                self, "category_scorer", None):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @classmethod
    def from_backbone(
        cls,
        backbone_path: str,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        **config_kwargs: Any,
    ) -> "SCMModel":
        """Build a fresh SCM from a pretrained backbone folder (heads newly initialised, in the backbone's dtype;
        :func:`model.backbone.build_on_backbone`).

        Args:
            backbone_path: a local HF model folder (a causal LM or its base model).
            dtype: weights dtype; None keeps the checkpoint's default (fp32).
            attn_implementation: e.g. ``sdpa``, ``eager``, ``flash_attention_2``.
            **config_kwargs: SCMConfig fields (alpha, gamma, task, ...).

        Raises:
            OSError: when the folder does not hold a loadable model.
        """
        return build_on_backbone(cls, backbone_path, lambda config: SCMConfig(backbone_config=config, **config_kwargs),
                                 dtype=dtype, attn_implementation=attn_implementation)

    @property
    def has_category_head(self) -> bool:
        """True when the checkpoint names harm categories (``--category-head``)."""
        return bool(self.config.category_labels)

    def add_category_head(self, labels: list[str], weight: float = 0.5, positions: str = "tokens",
                          detach: bool = False) -> None:
        """Give a fresh model the category head (training's ``--category-head``, once the data's categories are known).

        Args:
            labels: the category names, in the order of the head's outputs.
            weight: the category cross-entropy's weight in the loss.
            positions: ``tokens`` or ``pooled`` (:data:`CATEGORY_POSITIONS`).
            detach: train the head on detached hidden states (its loss leaves the backbone alone).

        Raises:
            ValueError: bad labels, weight or positions, or a model that already has the head.
        """
        if self.has_category_head:
            raise ValueError("the model already has a category head")
        check_category_fields(list(labels), weight, positions)
        self.config.category_labels = list(labels)
        self.config.category_weight = float(weight)
        self.config.category_positions = positions
        self.config.category_detach = bool(detach)
        reference = self.holistic_scorer.weight
        self.category_scorer = nn.Linear(reference.shape[1], len(labels)).to(reference.device, reference.dtype)
        nn.init.xavier_uniform_(self.category_scorer.weight)
        nn.init.zeros_(self.category_scorer.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        token_labels: torch.Tensor | None = None,
        sequence_labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        category_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SCMOutput:
        """Score every position and the whole sequence; compute the dual + logic loss when labels are given.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, seq)`` for the new tokens, or ``(batch, past + seq)`` with a cache.
            position_ids, past_key_values, use_cache: passed to the backbone (streaming uses them).
            token_labels: ``(batch, seq)`` 0/1 with -100 for positions without a label.
            sequence_labels: ``(batch,)`` 0/1 response labels.
            category_labels: ``(batch,)`` index into ``config.category_labels`` of each response's harm category,
                -100 for none (benign, or unlabelled); used only by a model with a category head.

        Returns:
            :class:`SCMOutput`.
        """
        kwargs.pop("num_items_in_batch", None)
        cache = kwargs.pop("cache", None)
        if past_key_values is None:
            past_key_values = cache
        kwargs[_cache_kwarg(type(self.backbone))] = past_key_values
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden = out.last_hidden_state
        token_logits = self.token_scorer(hidden)
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[-1] == hidden.shape[1]:
            pooling_mask = attention_mask
        else:  # no mask, a 4D mask or a mask over cached positions: every new position is a real token
            pooling_mask = torch.ones(hidden.shape[:2], device=hidden.device, dtype=torch.long)
        ids = input_ids if input_ids is not None and input_ids.shape == pooling_mask.shape else None
        last = holistic_index(ids, pooling_mask, self.config.holistic_pooling, self.config.pooling_pad_token_id)
        sequence_logits = self.holistic_scorer(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        category_logits = None
        if self.has_category_head:
            category_logits = self.category_scorer(hidden.detach() if self.config.category_detach else hidden)

        loss = token_loss = holistic_loss = logic_loss = category_loss = None
        if sequence_labels is not None or token_labels is not None:
            loss, token_loss, holistic_loss, logic_loss = self._loss(
                token_logits, sequence_logits, token_labels, sequence_labels
            )
            if category_logits is not None and category_labels is not None:
                category_loss = self._category_loss(category_logits, category_labels, token_labels, last)
                loss = loss + self.config.category_weight * category_loss
                category_loss = category_loss.detach()
            # hf-mtask-trainer binds report_metrics on the instance it trains (and patches the class for all
            # instances), so only the bound instance attribute can be called.
            if self.training and "report_metrics" in self.__dict__:
                parts = {"token_loss": token_loss, "holistic_loss": holistic_loss, "logic_loss": logic_loss}
                if category_loss is not None:
                    parts["category_loss"] = category_loss
                self.report_metrics(**parts)
        return SCMOutput(
            loss=loss,
            token_logits=token_logits,
            sequence_logits=sequence_logits,
            token_loss=token_loss,
            holistic_loss=holistic_loss,
            logic_loss=logic_loss,
            category_logits=category_logits,
            category_loss=category_loss,
            cache=backbone_cache_output(out),
            last_hidden_state=hidden,
        )

    def _loss(
        self,
        token_logits: torch.Tensor,
        sequence_logits: torch.Tensor,
        token_labels: torch.Tensor | None,
        sequence_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, gamma = self.config.alpha, self.config.gamma
        zero = sequence_logits.new_zeros((), dtype=torch.float32)
        ce = nn.CrossEntropyLoss(ignore_index=-100)
        token_loss = holistic_loss = logic_loss = zero
        if token_labels is not None and alpha > 0:
            labels = token_labels.to(token_logits.device)
            if (labels != -100).any():
                token_loss = ce(token_logits.float().reshape(-1, 2), labels.reshape(-1))
        if sequence_labels is not None and alpha < 1:
            holistic_loss = ce(sequence_logits.float(), sequence_labels.to(sequence_logits.device).long())
        if token_labels is not None and gamma > 0:
            logic_loss = self.logic_loss_fn(sequence_logits, token_logits, token_labels != -100)
        loss = alpha * token_loss + (1 - alpha) * holistic_loss + gamma * logic_loss
        return loss, token_loss.detach(), holistic_loss.detach(), logic_loss.detach()


    def _category_loss(
        self,
        category_logits: torch.Tensor,
        category_labels: torch.Tensor,
        token_labels: torch.Tensor | None,
        last: torch.Tensor,
    ) -> torch.Tensor:
        """Cross-entropy of the category head: at every harmful-labelled token of a response with a category
        (``tokens``), or at the holistic position (``pooled``, and when there are no token labels). Zero when the
        batch holds no categorised response."""
        labels = category_labels.to(category_logits.device).long()
        n_categories = category_logits.shape[-1]
        ce = nn.CrossEntropyLoss(ignore_index=-100)
        if self.config.category_positions == "tokens" and token_labels is not None:
            token_labels = token_labels.to(category_logits.device)
            targets = labels[:, None].expand_as(token_labels)
            targets = torch.where((token_labels == 1) & (targets != -100), targets, torch.full_like(targets, -100))
            if not (targets != -100).any():
                return category_logits.new_zeros((), dtype=torch.float32)
            return ce(category_logits.float().reshape(-1, n_categories), targets.reshape(-1))
        if not (labels != -100).any():
            return category_logits.new_zeros((), dtype=torch.float32)
        pooled = category_logits[torch.arange(category_logits.shape[0], device=category_logits.device), last]
        return ce(pooled.float(), labels)


AutoConfig.register("scm", SCMConfig, exist_ok=True)
AutoModel.register(SCMConfig, SCMModel, exist_ok=True)
