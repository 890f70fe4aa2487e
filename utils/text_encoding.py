"""How the project turns text into token ids: as plain text, never as control tokens.

A tokenizer matches its added tokens (``<|im_end|>``, ``<|endoftext|>``, Qwen's ``<tool_call>``...) in raw text
before anything else, so a response that *mentions* ``<|im_end|>`` would be encoded as the end-of-turn control token
when it arrives in one piece, and as ordinary pieces (``<|``, ``im``, ``_end``, ``|>``) when it arrives a character at
a time: the monitor's decision would depend on how the text was chunked, and text written by a user or an LLM could
inject control tokens. Training data, prompts and streamed responses are all text, so the project encodes them all
the same way: with a copy of the tokenizer's Rust backend that has no added tokens at all. ``split_special_tokens=True``
is not enough: it splits only the *special* added tokens (Qwen2.5's ``<tool_call>`` and ``<|fim_prefix|>`` are
added tokens that are not special). Text without added-token strings encodes exactly as
``tokenizer(text, add_special_tokens=False)``.

Used by ``utils/data_process.py`` (training data), ``serve/monitor.py`` (prompts) and ``serve/text_guard.py``
(streamed responses). The prompt cut of reduced-budget data (:func:`cut_prompt`) lives here for the same reason:
the data processing and the streaming runtime must cut prompts alike.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from typing import Optional, Sequence

from tokenizers import Tokenizer

# Plain-text copies per tokenizer object (building one deserialises the whole vocabulary: about a second for Qwen's).
_PLAIN: "weakref.WeakKeyDictionary[object, dict[bool, Tokenizer]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _top_level_values(serialized: str, wanted: set[str]) -> dict[str, tuple[int, int]]:
    """Character spans of the top-level JSON values named in ``wanted`` (parsed lazily: the vocabulary is skipped)."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    position = serialized.index("{") + 1
    while len(spans) < len(wanted):
        while serialized[position] in " \n\r\t,":
            position += 1
        if serialized[position] == "}":
            break
        key, position = decoder.raw_decode(serialized, position)
        while serialized[position] in " \n\r\t:":
            position += 1
        _, end = decoder.raw_decode(serialized, position)
        if key in wanted:
            spans[key] = (position, end)
        position = end
    return spans


def plain_text_backend(tokenizer, *, normalizer: bool = True) -> Tokenizer:
    """A copy of ``tokenizer``'s Rust backend that encodes every string as text (no added-token matching).

    Args:
        tokenizer: a fast Hugging Face tokenizer (``tokenizer.backend_tokenizer`` exists).
        normalizer: keep the backend's normalizer (False: for callers that normalise the text themselves, like the
            text guard, which must map released characters through the normalisation).

    Returns:
        A ``tokenizers.Tokenizer`` without added tokens, truncation or padding, cached per tokenizer object.
        Encode with ``add_special_tokens=False``.

    Raises:
        ValueError: a slow tokenizer (no Rust backend).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; the project encodes text with the "
                         f"tokenizer's Rust backend (load it with AutoTokenizer, use_fast=True)")
    with _LOCK:
        cached = _PLAIN.setdefault(tokenizer, {})
        if normalizer not in cached:
            serialized = backend.to_str()
            keys = {"added_tokens"} | (set() if normalizer else {"normalizer"})
            # Replace from the end so that earlier spans stay valid.
            for key, (start, end) in sorted(_top_level_values(serialized, keys).items(), key=lambda kv: -kv[1][0]):
                serialized = serialized[:start] + ("[]" if key == "added_tokens" else "null") + serialized[end:]
            plain = Tokenizer.from_str(serialized)
            plain.no_truncation()
            plain.no_padding()
            cached[normalizer] = plain
        return cached[normalizer]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as plain text (see the module docstring), without BOS/EOS.

    Raises:
        TypeError, ValueError: ``text`` is not a str or holds a lone surrogate (not valid Unicode).
    """
    return encode_texts(tokenizer, [text])[0]


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """:func:`encode_text` for many texts at once (one batched call into the Rust backend).

    A slow (Python) tokenizer has no backend to copy: it is called with ``split_special_tokens=True``, which keeps
    its special tokens out of the text (slow tokenizers are not used by the streaming runtime).

    Raises:
        TypeError, ValueError: a text that is not a str or holds a lone surrogate (naming the text and position).
    """
    for number, text in enumerate(texts):
        check_unicode(text, f"text {number}")
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    return [encoding.ids for encoding in plain_text_backend(tokenizer).encode_batch(list(texts),
                                                                                    add_special_tokens=False)]


def check_unicode(text: str, what: str) -> None:
    """Refuse a string the tokenizer cannot take: one that is not a str, or holds a lone surrogate.

    Raises:
        TypeError: not a str. ValueError: a lone surrogate (U+D800..U+DFFF), with its position and the fix.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    found = None if text.isascii() else _SURROGATE.search(text)
    if found is not None:
        raise ValueError(
            f"{what} holds a lone surrogate U+{ord(found.group()):04X} at character {found.start()}: that is not valid "
            f"Unicode text. Decode the upstream bytes with errors='replace', or join a UTF-16 surrogate pair that was "
            f"split across chunks before passing it on.")


def cut_prompt(prompt_ids: Sequence[int], max_prompt_tokens: Optional[int]) -> list[int]:
    """The last ``max_prompt_tokens`` ids of an encoded ``prompt + "\\n\\n"`` (all of them for None, none for 0).

    The one rule shared by the data processing and the streaming runtime (``serve/monitor.py``), so that a monitor
    trained on cut prompts sees cut prompts when it is served.
    """
    if max_prompt_tokens is None or len(prompt_ids) <= max_prompt_tokens:
        return list(prompt_ids)
    return list(prompt_ids[len(prompt_ids) - max_prompt_tokens :])
