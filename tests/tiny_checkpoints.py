"""Tiny random SCM checkpoints and generators for smoke runs of the streaming tools (benchmark ``--tiny``, tests).

They are saved like real checkpoints (weights, config, a real tokenizer), so the CLI and the verification load
them from their path alone. The backbone is 2 layers wide 32 with the real tokenizer's full vocabulary, so any
text the tokenizer produces is a valid input; the scores are random but deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

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
) -> Path:
    """Save a tiny random SCM checkpoint (with ``tokenizer_path``'s tokenizer) into ``folder``.

    Args:
        folder: destination (created).
        tokenizer_path: a folder with a tokenizer (e.g. ``model.assets.smollm2_path()``).
        seed: torch seed for the random weights.
        theta, delay_k, scorer: the checkpoint's default operating point.
        max_position_embeddings: the backbone's maximum length.

    Returns:
        The folder.
    """
    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(seed)
    config = SCMConfig(backbone_config=tiny_llama_config(tokenizer, max_position_embeddings).to_dict(),
                       theta=theta, delay_k=delay_k, scorer=scorer)
    SCMModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
