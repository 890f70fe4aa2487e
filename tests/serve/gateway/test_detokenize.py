"""Per-token text of a generated id stream (serve/gateway/detokenize.py)."""

from __future__ import annotations

from serve.gateway.detokenize import IncrementalDetokenizer

TEXT = "Sure! It'll cost $1,234 — café 😀 日本語 done.\n\nNext  line"


def test_token_texts_concatenate_to_the_decoded_text_and_wait_for_whole_characters(smol_tokenizer):
    ids = smol_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(smol_tokenizer)
    texts = [text for token in ids for text in detokenizer.add([token])]
    assert len(texts) == len(ids)
    assert "".join(texts) + detokenizer.flush() == smol_tokenizer.decode(ids) == TEXT
    assert all("\ufffd" not in text for text in texts)
    # The emoji spans two byte-level tokens: the first gets no text, the second the whole character.
    emoji_at = texts.index(next(t for t in texts if "😀" in t))
    assert texts[emoji_at - 1] == "" and texts[emoji_at].endswith("😀")


def test_special_tokens_give_no_text_and_a_cut_character_flushes_as_a_replacement(smol_tokenizer):
    detokenizer = IncrementalDetokenizer(smol_tokenizer)
    assert detokenizer.add([smol_tokenizer.eos_token_id]) == [""]
    emoji = smol_tokenizer("😀", add_special_tokens=False)["input_ids"]
    assert len(emoji) > 1
    assert detokenizer.add(emoji[:1]) == [""]
    assert detokenizer.flush() == "\ufffd"
