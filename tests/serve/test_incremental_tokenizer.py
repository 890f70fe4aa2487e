"""Incremental re-tokenisation (serve/incremental_tokenizer.py): exact whatever the chunking, normalisation by
segments, and bounded work per character on a long unbroken word."""

from __future__ import annotations

import random
import time

import pytest
import torch
from transformers import AutoTokenizer

from model import SCMConfig, SCMModel
from serve.incremental_tokenizer import FULL_ENCODE_CHARS, IncrementalTokenizer
from serve.monitor import StreamingMonitor
from serve.text_guard import TextStreamGuard
from tests.tiny_checkpoints import tiny_llama_config
from utils.decision_rules import DelayK
from utils.text_encoding import encode_text


@pytest.fixture(scope="module", params=["smollm2", "qwen2.5"])
def tokenizer(request):
    from model.assets import qwen_tokenizer_path, smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path() if request.param == "smollm2" else qwen_tokenizer_path())


def _stream(tokenizer, pieces) -> list[int]:
    incremental = IncrementalTokenizer(tokenizer)
    ids = [t.token_id for piece in pieces for t in incremental.add(piece)]
    return ids + [t.token_id for t in incremental.flush()]


@pytest.mark.parametrize("text", [
    "x" * 700 + " then more words, " + "y" * 300 + "\n\n" + "z" * 5,  # long words: the window path
    "   " * 120 + "spaces before a word" + "!" * 400 + " 123456789" * 40,  # long whitespace, punctuation, digits
    "日本語" * 150 + " and " + "😀" * 200 + " end",
])
def test_long_words_are_tokenised_exactly(tokenizer, text):
    assert len(text) > FULL_ENCODE_CHARS
    expected = encode_text(tokenizer, text)
    assert _stream(tokenizer, list(text)) == expected
    rng = random.Random(1)
    pieces, at = [], 0
    while at < len(text):
        size = rng.choice([0, 1, 3, 17, 64, 200])
        pieces.append(text[at: at + size])
        at += size
    assert _stream(tokenizer, pieces) == expected


def test_text_is_normalised_by_segments(qwen_tokenizer_dir):
    qwen = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    incremental = IncrementalTokenizer(qwen)
    assert not incremental.identity
    # The open segment "a" + marks waits for the next starter: nothing of it reaches the tokenizer before that.
    step = incremental.propose("word a\u0301")
    assert (step.normalized_text, step.open_segment, step.tokens) == ("word ", "a\u0301", [])
    incremental.accept(step)
    step = incremental.propose("\u0323")
    assert (step.normalized_text, step.open_segment) == ("", "a\u0301\u0323")
    incremental.accept(step)
    step = incremental.propose(" x y")
    # NFC: U+0323 moves before U+0301 and composes with "a"; "y" is the open segment now.
    assert (step.normalized_text, step.open_segment) == ("\u1ea1\u0301 x ", "y")
    incremental.accept(step)
    # The boundaries map normalised positions back to raw ones: "a" + U+0301 + U+0323 (3 raw characters) is
    # U+1EA1 + U+0301 (2 normalised characters).
    assert incremental.raw_position(len("word ")) == len("word ")
    assert incremental.raw_position(len("word \u1ea1\u0301")) == len("word a\u0301\u0323")
    assert incremental.raw_position(len("word \u1ea1")) == len("word ")  # inside the segment: back to its start
    from model.assets import smollm2_path

    smol = IncrementalTokenizer(AutoTokenizer.from_pretrained(smollm2_path()))
    smol.add("e\u0301 x y")
    # No normaliser: raw and normalised positions agree, also inside what NFC would treat as one segment.
    assert smol.identity and smol.committed_chars == smol.committed_normalized == 2 and smol.raw_position(1) == 1


def test_a_normaliser_that_cannot_work_by_segments_is_refused(tokenizer):
    import copy

    from tokenizers import normalizers

    changed = copy.deepcopy(tokenizer)
    changed.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Strip()])
    with pytest.raises(ValueError, match="cannot be applied to a growing text piece by piece .*Strip"):
        IncrementalTokenizer(changed)


def test_a_long_unbroken_word_costs_bounded_work_per_character():
    from model.assets import smollm2_path

    # Before the fix every character re-encoded the whole pending word: 1k/2k/4k/8k characters took
    # 0.95/4.24/19.1/92.0 s (per character x2.2, x4.8, x12 of the 1k cost); now the cost per character is flat.
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(tokenizer, 8192).to_dict())).eval()
    monitor = StreamingMonitor(model, tokenizer, rule=DelayK(10**9))

    def seconds_per_character(n: int) -> float:
        guard = TextStreamGuard(monitor, "p")
        word = ("abcdefghij" * n)[:n]
        began = time.process_time()
        for char in word:
            guard.feed(char)
        spent = time.process_time() - began
        assert guard.finish().released == word
        return spent / n

    seconds_per_character(300)  # warm-up
    short, long = seconds_per_character(500), seconds_per_character(4000)
    assert long < 3 * short, (short, long)
