"""Token ids -> text, one token at a time, for the local generator's stream.

Decoding a growing list of ids again and again would cost O(n) per token; decoding each id alone breaks
characters whose UTF-8 bytes span several byte-level tokens and, for some tokenizers, the spaces between words.
The decoder here decodes a short window (the previous few tokens plus the new one) and emits the difference, and
gives a token whose bytes do not yet form a whole character no text until the character is complete (the text then
goes to the token that completes it). The texts of all tokens concatenate to ``tokenizer.decode(ids)``.
"""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"
# Tokens of left context decoded with each new one: enough for a UTF-8 character (4 bytes) and word spacing.
CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Decode a stream of token ids into per-token text.

    Args:
        tokenizer: the tokenizer the ids come from.
        skip_special_tokens: drop special tokens' text (the generator's end-of-turn marker and the like).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids already turned into text

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, ids: Sequence[int]) -> list[str]:
        """Append ids; return one text per id ('' for an id whose character is not complete yet)."""
        texts = []
        for token in ids:
            self.ids.append(int(token))
            before = self._decode(self.ids[self._prefix:self._read])
            after = self._decode(self.ids[self._prefix:])
            if after.endswith(REPLACEMENT) or not after.startswith(before):
                texts.append("")
                continue
            texts.append(after[len(before):])
            self._read = len(self.ids)
            self._prefix = max(0, self._read - CONTEXT_TOKENS)
        return texts

    def flush(self) -> str:
        """Text of trailing ids whose character never completed (as replacement characters)."""
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._read = len(self.ids)
        return after[len(before):] if after.startswith(before) else after
