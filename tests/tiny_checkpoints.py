"""Tiny random SCM checkpoints and generators for smoke runs of the streaming tools (benchmark ``--tiny``, tests).

They are saved like real checkpoints (weights, config, a real tokenizer), so the CLI and the verification load
them from their path alone. The backbone is 2 layers wide 32 with the real tokenizer's full vocabulary, so any
text the tokenizer produces is a valid input; the scores are random but deterministic for a given seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from model.modeling_qwen4dual_2CE_w_logic import SCMConfig, SCMModel


def tiny_llama_config(tokenizer, max_position_embeddings: int = 2048) -> LlamaConfig:
    """A 2-layer, 32-wide Llama config over ``tokenizer``'s full vocabulary."""
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)


def build_tiny_scm(
    folder: str | Path,
    tokenizer_path: str | Path,
    seed: int = 0,
    theta: float = 0.5,
    delay_k: int = 1,
    scorer: str = "token",
    max_position_embeddings: int = 2048,
    category_labels: Sequence[str] | None = None,
    category_bias: Mapping[str, float] | None = None,
    category_steer: tuple[str, str, float] | None = None,
) -> Path:
    """Save a tiny random SCM checkpoint (with ``tokenizer_path``'s tokenizer) into ``folder``.

    Args:
        folder: destination (created).
        tokenizer_path: a folder with a tokenizer (e.g. ``model.assets.smollm2_path()``).
        seed: torch seed for the random weights.
        theta, delay_k, scorer: the checkpoint's default operating point.
        max_position_embeddings: the backbone's maximum length.
        category_labels: give the model a category head over these categories (None: the paper's model).
        category_bias: hand-set the head: zero weights and these biases (missing names 0), so that every token gets
            the same distribution, ``softmax(bias)`` (e.g. ``{"illicit": 8.0}`` names illicit everywhere).
        category_steer: ``(high, low, boundary)``: :func:`steer_categories` (the category follows the token score).

    Returns:
        The folder.
    """
    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(seed)
    config = SCMConfig(backbone_config=tiny_llama_config(tokenizer, max_position_embeddings).to_dict(),
                       theta=theta, delay_k=delay_k, scorer=scorer,
                       category_labels=list(category_labels) if category_labels else None)
    model = SCMModel(config)
    if category_bias is not None:
        set_category_bias(model, category_bias)
    if category_steer is not None:
        steer_categories(model, *category_steer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@torch.no_grad()
def set_category_bias(model: SCMModel, bias: Mapping[str, float]) -> SCMModel:
    """Zero the category head's weights and set its biases (missing names 0): every token's category distribution
    is then ``softmax(bias)`` in label order, whatever the text."""
    head = model.category_scorer
    head.weight.zero_()
    head.bias.copy_(torch.tensor([float(bias.get(name, 0.0)) for name in model.config.category_labels]))
    return model


@torch.no_grad()
def steer_categories(model: SCMModel, high: str, low: str, boundary: float, sharpness: float = 20.0) -> SCMModel:
    """Make the category follow the token head: tokens whose token score is above ``boundary`` are named ``high``,
    those below ``low`` (other categories get a bias of -50 and never win).

    The token head's harmful-minus-benign logit is ``d.h + e``; the head gets ``+-sharpness * (d.h + e -
    logit(boundary))`` for the two categories, so their logits differ by ``2 * sharpness * (logit(score) -
    logit(boundary))``.
    """
    linear = model.token_scorer[1]
    direction = linear.weight[1] - linear.weight[0]
    offset = float(linear.bias[1] - linear.bias[0]) - math.log(boundary / (1 - boundary))
    head = model.category_scorer
    head.weight.zero_()
    head.bias.fill_(-50.0)
    labels = model.config.category_labels
    for name, sign in ((high, 1.0), (low, -1.0)):
        head.weight[labels.index(name)] = sign * sharpness * direction
        head.bias[labels.index(name)] = sign * sharpness * offset
    return model


def build_tiny_generator(folder: str | Path, tokenizer_path: str | Path, seed: int = 0, varied: bool = False) -> Path:
    """Save a tiny random ``LlamaForCausalLM`` (with ``tokenizer_path``'s tokenizer and chat template) into ``folder``.

    Args:
        varied: untied output head and large random weights, so that greedy decoding wanders through the vocabulary
            instead of repeating one token (what the default tiny model does); tests that compare texts need it.

    Returns:
        The folder.
    """
    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer)
    if varied:
        config.initializer_range, config.tie_word_embeddings = 0.5, False
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
