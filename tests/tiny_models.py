"""Tiny random configs and hand-made processed data for tests (importable as ``tests.tiny_models``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from transformers import Qwen2Config

TINY_VOCAB = 512


def tiny_qwen2_config(vocab_size: int = TINY_VOCAB) -> Qwen2Config:
    """A 2-layer, 32-wide Qwen2 config."""
    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def write_processed_split(path: Path, n: int, seed: int, bos: int | None = None, eos: int | None = 0) -> None:
    """Write ``n`` processed records whose label is learnable: harmful responses contain token 7."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            harmful = i % 3 == 0
            prompt = [rng.randrange(20, TINY_VOCAB) for _ in range(rng.randint(3, 6))]
            response = [rng.randrange(20, TINY_VOCAB) for _ in range(rng.randint(4, 12))]
            labels = [0] * len(response)
            if harmful:
                at = rng.randrange(1, len(response))
                response[at:] = [7] * (len(response) - at)
                labels[at:] = [1] * (len(response) - at)
            ids = ([bos] if bos is not None else []) + prompt + response + ([eos] if eos is not None else [])
            token_labels = ([-100] if bos is not None else []) + [-100] * len(prompt) + labels + (
                [-100] if eos is not None else [])
            record = {"id": f"{path.stem}-{i:05d}", "input_ids": ids, "token_labels": token_labels,
                      "sequence_labels": int(harmful), "response_start": len(ids) - len(response) - (eos is not None)}
            handle.write(json.dumps(record) + "\n")


def write_categorised_split(path: Path, n: int, seed: int, eos: int | None = 0) -> None:
    """Write ``n`` processed records with harm categories: harmful responses end in token 7 ("illicit") or token 9
    ("hate"), so both the label and the category are learnable; benign records carry ``category`` None."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            category = {0: "illicit", 3: "hate"}.get(i % 6)
            prompt = [rng.randrange(20, TINY_VOCAB) for _ in range(rng.randint(3, 6))]
            response = [rng.randrange(20, TINY_VOCAB) for _ in range(rng.randint(4, 12))]
            labels = [0] * len(response)
            if category is not None:
                at = rng.randrange(1, len(response))
                response[at:] = [7 if category == "illicit" else 9] * (len(response) - at)
                labels[at:] = [1] * (len(response) - at)
            ids = prompt + response + ([eos] if eos is not None else [])
            token_labels = [-100] * len(prompt) + labels + ([-100] if eos is not None else [])
            record = {"id": f"{path.stem}-{i:05d}", "input_ids": ids, "token_labels": token_labels,
                      "sequence_labels": int(category is not None), "response_start": len(prompt),
                      "category": category}
            handle.write(json.dumps(record) + "\n")
