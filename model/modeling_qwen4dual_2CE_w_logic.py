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

    ``token_logits`` is ``(batch, seq, 2)``, ``sequence_logits`` is ``(batch, 2)``, the holistic head at the position
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
    Linear(hidden, 2, bias=False) on the last real token. Both Xavier-uniform initialised with zero bias.
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
        self.post_init()
        keep_attention(self.backbone, requested, config._attn_implementation)

    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads are ours; the backbone's modules are dispatched to its own _init_weights by HF.
        if module is self.token_scorer[1] or module is self.holistic_scorer:
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
        **kwargs: Any,
    ) -> SCMOutput:
        """Score every position and the whole sequence; compute the dual + logic loss when labels are given.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, seq)`` for the new tokens, or ``(batch, past + seq)`` with a cache.
            position_ids, past_key_values, use_cache: passed to the backbone (streaming uses them).
            token_labels: ``(batch, seq)`` 0/1 with -100 for positions without a label.
            sequence_labels: ``(batch,)`` 0/1 response labels.

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

        loss = token_loss = holistic_loss = logic_loss = None
        if sequence_labels is not None or token_labels is not None:
            loss, token_loss, holistic_loss, logic_loss = self._loss(
                token_logits, sequence_logits, token_labels, sequence_labels
            )
            # hf-mtask-trainer binds report_metrics on the instance it trains (and patches the class for all
            # instances), so only the bound instance attribute can be called.
            if self.training and "report_metrics" in self.__dict__:
                self.report_metrics(
                    token_loss=token_loss, holistic_loss=holistic_loss, logic_loss=logic_loss
                )
        return SCMOutput(
            loss=loss,
            token_logits=token_logits,
            sequence_logits=sequence_logits,
            token_loss=token_loss,
            holistic_loss=holistic_loss,
            logic_loss=logic_loss,
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


AutoConfig.register("scm", SCMConfig, exist_ok=True)
AutoModel.register(SCMConfig, SCMModel, exist_ok=True)
