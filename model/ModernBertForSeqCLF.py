"""Encoder classifier for the full-detection baseline (the paper's ModernBERT), over any ``AutoModel`` encoder.

CLS pooling (the first position's last hidden state) then ``Linear(hidden, 2, bias=False)``. ModernBERT is the
paper's encoder; BERT-family encoders such as all-MiniLM-L6-v2 (the offline default) work the same way. An encoder
is bidirectional, so its partial-detection mode must re-classify every response prefix separately
(``test/test_modernbert_partial.py``): there is no one-pass shortcut as with the causal SCM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from model.backbone import build_on_backbone, keep_attention
from model.modeling_qwen4dual_2CE_w_logic import LABEL_NAMES


class EncoderClassifierConfig(PreTrainedConfig):
    """Configuration of an encoder-classifier checkpoint.

    Attributes:
        encoder_config: config of the encoder (any ``AutoConfig`` model type: modernbert, bert, ...).
        task: always ``encoder-full``; evaluation scripts check it.
    """

    model_type = "scm-encoder-classifier"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="modernbert")}

    encoder_config: dict | PreTrainedConfig | None = None
    task: str = "encoder-full"

    def __post_init__(self, **kwargs):
        if not self.id2label or len(self.id2label) != 2:
            kwargs.setdefault("id2label", dict(enumerate(LABEL_NAMES)))
        super().__post_init__(**kwargs)

    def get_text_config(self, decoder=None, encoder=None):  # noqa: D401 - HF hook
        """The encoder's config is the text config."""
        return self.encoder_config


@dataclass
class EncoderClassifierOutput(ModelOutput):
    """``loss`` (when labels are given) and ``logits`` ``(batch, 2)``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class EncoderForSequenceClassification(PreTrainedModel):
    """CLS-pooled two-class classifier over an encoder backbone."""

    config_class = EncoderClassifierConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: EncoderClassifierConfig, encoder: PreTrainedModel | None = None) -> None:
        # PreTrainedModel.__init__ may reset the sub-config's attention implementation (model/backbone.py).
        requested = (encoder.config if encoder is not None else config.encoder_config)._attn_implementation
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder_config)
        self.classifier = nn.Linear(config.encoder_config.hidden_size, 2, bias=False)
        self.post_init()
        keep_attention(self.encoder, requested, config._attn_implementation)

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.classifier:
            nn.init.xavier_uniform_(module.weight)

    @classmethod
    def from_encoder(
        cls, encoder_path: str, dtype: torch.dtype | None = None, attn_implementation: str | None = None
    ) -> "EncoderForSequenceClassification":
        """Build a fresh classifier from a pretrained encoder folder (classifier newly initialised, in the encoder's
        dtype; :func:`model.backbone.build_on_backbone`).

        Args:
            encoder_path: a local HF encoder folder.
            dtype: weights dtype; None keeps the checkpoint's default (fp32).
            attn_implementation: e.g. ``sdpa``, ``eager``, ``flash_attention_2``.

        Raises:
            OSError: when the folder does not hold a loadable model.
        """
        return build_on_backbone(cls, encoder_path, lambda config: EncoderClassifierConfig(encoder_config=config),
                                 dtype=dtype, attn_implementation=attn_implementation)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        sequence_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> EncoderClassifierOutput:
        """Classify each sequence from its first position.

        Args:
            input_ids: ``(batch, seq)``; position 0 should be CLS (the data processing prepends it).
            attention_mask: ``(batch, seq)``.
            sequence_labels: ``(batch,)`` 0/1 labels; when given, the cross-entropy is returned as ``loss``.
            **kwargs: ignored training-only fields (``token_labels``, ``num_items_in_batch``).
        """
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        logits = self.classifier(out.last_hidden_state[:, 0])
        loss = None
        if sequence_labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), sequence_labels.to(logits.device).long())
        return EncoderClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(EncoderClassifierConfig.model_type, EncoderClassifierConfig, exist_ok=True)
AutoModel.register(EncoderClassifierConfig, EncoderForSequenceClassification, exist_ok=True)
