"""A pretrained ``AutoModel`` backbone with newly initialised heads around it: what ``SCMModel.from_backbone`` and
``EncoderForSequenceClassification.from_encoder`` share.

The attention implementation needs care. Wrapping a backbone's config in a composite config (``SCMConfig``,
``EncoderClassifierConfig``) resets that shared config's ``_attn_implementation`` to None, and with none set a
causal backbone attends bidirectionally (token scores see the future; ``tests/model/test_modeling_scm.py`` pins
it). So the implementation the backbone was loaded with is read before the composite config exists and set again
once the model is built.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel

ModelT = TypeVar("ModelT", bound=PreTrainedModel)


def keep_attention(backbone: PreTrainedModel, implementation: str | None, fallback: str | None = None) -> None:
    """Give ``backbone`` an attention implementation: ``implementation`` when set, else the one it has, else
    ``fallback`` (the composite model's), else ``sdpa``.

    Args:
        backbone: the backbone module inside a composite model.
        implementation: the implementation it was loaded with (None: not known).
        fallback: the composite config's implementation.
    """
    chosen = implementation or backbone.config._attn_implementation or fallback or "sdpa"
    backbone.config._attn_implementation = chosen


def build_on_backbone(
    model_class: type[ModelT],
    backbone_path: str,
    make_config: Callable[[PreTrainedConfig], PreTrainedConfig],
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> ModelT:
    """Load a pretrained backbone and build ``model_class(make_config(backbone.config), backbone)`` around it.

    The backbone keeps the attention implementation it was loaded with, and the heads (every child module but the
    backbone, created in fp32) are cast to the backbone's dtype.

    Args:
        model_class: a ``PreTrainedModel`` whose ``__init__(config, backbone)`` uses the given backbone and whose
            ``base_model_prefix`` names the attribute holding it.
        backbone_path: a local HF model folder (a causal LM, an encoder, or their base model).
        make_config: the backbone's config -> the composite model's config.
        dtype: weights dtype; None keeps the checkpoint's default (fp32).
        attn_implementation: e.g. ``sdpa``, ``eager``, ``flash_attention_2``; None: transformers' default.

    Returns:
        The model, heads newly initialised.

    Raises:
        OSError: when the folder does not hold a loadable model.
    """
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    backbone = AutoModel.from_pretrained(backbone_path, **kwargs)
    loaded_with = backbone.config._attn_implementation  # read before make_config resets it
    model = model_class(make_config(backbone.config), backbone)
    keep_attention(getattr(model, model_class.base_model_prefix), loaded_with, model.config._attn_implementation)
    for module in model.children():
        if module is not backbone:
            module.to(backbone.dtype)
    return model
