"""Re-tokenise a growing text with the monitor's tokenizer, committing only tokens that more text cannot change.

Used by ``serve/text_guard.py``. Three things make this exact, whatever the chunking:

- **Plain text.** The text is encoded with :func:`utils.text_encoding.plain_text_backend`: added-token strings such as
  ``<|im_end|>`` are ordinary text, as in the training data, so a chunk boundary can never turn them into control
  tokens (or not).
- **Normalisation by segments.** A tokenizer with a normaliser (Qwen2.5: NFC) encodes ``normalize(text)``, and
  appending a character can change the normal form of the characters before it (``e`` + U+0301 becomes ``é``;
  combining marks are reordered). The text is therefore cut into *segments*: a starter character and the combining
  characters after it, closed only when the next starter arrives and is checked not to combine with it. Each closed
  segment is normalised with the tokenizer's own normaliser; the normal form of the text is the concatenation of the
  segments' normal forms. Every segment boundary is recorded as a (raw position, normalised position) pair, so the
  caller can map "the first n normalised characters are scored" back to the raw text it may release
  (:meth:`IncrementalTokenizer.raw_position`): the released raw text always normalises to a prefix of the scored
  text. A tokenizer without a normaliser (SmolLM2) skips all this: raw and normalised positions are the same.
- **Held-back pre-tokens.** Byte-level BPE never merges across pre-tokens, but appending text can change the last
  pre-token ("hel" + "lo") and, through the pre-tokenizer's look-ahead, the one before it (a trailing ``'`` becomes
  ``'ll``; a trailing space joins the next word). The last :data:`HELD_WORDS` pre-tokens are held back and the rest is
  committed; :meth:`IncrementalTokenizer.propose` with ``final=True`` commits everything. A self-check rejects
  tokenizers for which this is not exact (SentencePiece tokenizers that add a prefix space to every piece).

Bounded work per character: the pending text (from the committed point on) is re-encoded whole only while it is
short (:data:`FULL_ENCODE_CHARS`) or when a new pre-token may have started; a new pre-token is looked for by
pre-tokenising only the last :data:`WINDOW_CHARS` characters. So one long unbroken word costs O(window) per
character instead of re-encoding the whole word each time. Missing a pre-token boundary could only delay a commit
(the full re-encode that follows is exact), never commit a token too early.

Transactions: :meth:`IncrementalTokenizer.propose` computes what appending text would commit and changes nothing;
:meth:`IncrementalTokenizer.accept` applies it. The guard accepts only after the monitor has scored the tokens.
"""

from __future__ import annotations

import json
import unicodedata
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable

from transformers import PreTrainedTokenizerBase

from utils.text_encoding import check_unicode, plain_text_backend

# Pre-tokens held back at the end of the text: the trailing partial word and the one before it (see module doc).
HELD_WORDS = 2
# Pending text up to this many characters is re-encoded on every call (cheap, and the common case).
FULL_ENCODE_CHARS = 256
# Characters at the end of the pending text that are pre-tokenised to look for a new pre-token.
WINDOW_CHARS = 64
# Normalisers applied per segment: Unicode normal forms and lower-casing (a Sequence of them is fine too). They
# transform a segment independently of the text around it, which is what normalising by segments needs.
SEGMENT_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD", "Lowercase")
# Probe for the construction-time self-check: contractions split across chunks, digits, whitespace runs, emoji,
# combining marks out of canonical order, an added-token string.
_SELF_CHECK_TEXT = "It'll cost $1,234.5 -- don't  go!\n\n\tNew para 😀 café a\u0301\u0323 x <|endoftext|>."
# Tokenizers that passed (None) or failed (the message) the self-check, so that a guard per stream is cheap.
_SELF_CHECKED: "weakref.WeakKeyDictionary[object, str | None]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class MonitoredToken:
    """A token committed to the monitor, with its character span in the *normalised* response text.

    For a tokenizer without a normaliser the normalised text is the response text itself.
    """

    token_id: int
    start: int
    end: int


@dataclass(frozen=True)
class TokenizerStep:
    """What appending some text would do (see :meth:`IncrementalTokenizer.propose`); applied by ``accept``.

    Attributes:
        tokens: the tokens that become final.
        raw_chars: raw characters the text added.
        normalized_text: the normal form of the segments this text closed (what reaches the tokenizer).
        boundaries: new segment boundaries, ``(raw position, normalised position)``, absolute.
        open_segment: raw text of the still open (last) segment afterwards.
        pending: normalised text after the commit point afterwards, or None when it is the old pending text plus
            ``normalized_text`` (nothing re-encoded).
        committed_normalized: normalised characters committed afterwards.
        tail: the last :data:`WINDOW_CHARS` normalised characters of the pending text afterwards.
        token_texts: the normalised text of each committed token (a character that several byte-level tokens
            share is in each of their texts).
        token_pieces: the committed normalised text cut at the tokens' starts: one piece per token, together exactly
            the newly committed text (a shared character goes to the last token that starts before it ends).
    """

    tokens: list[MonitoredToken]
    raw_chars: int
    normalized_text: str
    boundaries: list[tuple[int, int]]
    open_segment: str
    pending: str | None
    committed_normalized: int
    tail: str
    token_texts: list[str]
    token_pieces: list[str]


def _normalizer_kinds(spec: dict | None) -> list[str]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [kind for part in spec.get("normalizers", []) for kind in _normalizer_kinds(part)]
    return [spec.get("type", "?")]


class IncrementalTokenizer:
    """Re-tokenise a growing text, committing only tokens that more text can no longer change (module docstring).

    Args:
        tokenizer: a fast (Rust-backed) byte-level BPE tokenizer such as Qwen2.5's or SmolLM2's.
        self_check: run the construction-time self-check (cached per tokenizer object).

    Raises:
        ValueError: a slow tokenizer; a normaliser that cannot be applied segment by segment; a tokenizer for which
            committing all but the last pre-tokens is not exact (the self-check).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, self_check: bool = True) -> None:
        if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; the text guard needs word ids and "
                             f"character offsets (load the tokenizer with AutoTokenizer, use_fast=True)")
        self.tokenizer = tokenizer
        normalizer = tokenizer.backend_tokenizer.normalizer
        kinds = _normalizer_kinds(None if normalizer is None else json.loads(normalizer.__getstate__()))
        unsupported = [kind for kind in kinds if kind not in SEGMENT_NORMALIZERS]
        if unsupported:
            raise ValueError(f"{type(tokenizer).__name__}'s normalizer ({', '.join(kinds)}) cannot be applied to a "
                             f"growing text piece by piece ({', '.join(unsupported)} is not one of "
                             f"{', '.join(SEGMENT_NORMALIZERS)}); use a byte-level BPE monitor tokenizer")
        self._normalize: Callable[[str], str] | None = normalizer.normalize_str if kinds else None
        self._ascii_fixed = self._normalize is None or all(
            self._normalize(chr(code)) == chr(code) for code in range(128))
        # Encodes the already-normalised text (normalising twice would be harmless, but the offsets must be exact).
        self.encoder = plain_text_backend(tokenizer, normalizer=False)
        self._pre_tokenize = self.encoder.pre_tokenizer.pre_tokenize_str if self.encoder.pre_tokenizer else None
        self.committed_normalized = 0  # characters of the normal form committed
        self.raw_chars = 0  # raw characters received
        self._open_segment = ""
        self._pending_parts: list[str] = []  # normalised text after the commit point
        self._pending_chars = 0
        self._tail = ""
        # Segment boundaries not yet forgotten; the first is an anchor at or before the commit point.
        self._boundaries: deque[tuple[int, int]] = deque([(0, 0)])
        if self_check:
            self._self_check()

    # ------------------------------------------------------------------------------------------------ public

    @property
    def committed_chars(self) -> int:
        """Characters of the raw text that committed tokens cover completely (a segment boundary).

        Equal to :attr:`committed_normalized` for a tokenizer without a normaliser.
        """
        return self.raw_position(self.committed_normalized)

    @property
    def identity(self) -> bool:
        """True when the tokenizer has no normaliser: raw and normalised positions are the same."""
        return self._normalize is None

    def normalize(self, text: str) -> str:
        """The tokenizer's normal form of a complete text (what the whole-text encoding sees)."""
        return text if self._normalize is None else self._normalize(text)

    def propose(self, text: str, final: bool = False) -> TokenizerStep:
        """What appending ``text`` (and, with ``final``, ending the text) would commit; changes nothing.

        Raises:
            TypeError, ValueError: ``text`` is not a str, or holds a lone surrogate.
        """
        check_unicode(text, "the text")
        normalized, boundaries, open_segment = self._segment(text, final)
        pending_chars = self._pending_chars + len(normalized)
        committed = self.committed_normalized
        tokens: list[MonitoredToken] = []
        texts: list[str] = []
        pieces: list[str] = []
        pending: str | None = None
        tail = (self._tail + normalized)[-WINDOW_CHARS:]
        if final or pending_chars <= FULL_ENCODE_CHARS or self._may_start_pre_token(normalized):
            pending = "".join(self._pending_parts) + normalized
            tokens, texts, pieces, cut = self._commit(pending, committed, 0 if final else HELD_WORDS)
            pending = pending[cut:]
            committed += cut
            tail = pending[-WINDOW_CHARS:]
        return TokenizerStep(tokens=tokens, raw_chars=len(text), normalized_text=normalized, boundaries=boundaries,
                             open_segment=open_segment, pending=pending, committed_normalized=committed, tail=tail,
                             token_texts=texts, token_pieces=pieces)

    def accept(self, step: TokenizerStep) -> None:
        """Apply a step from :meth:`propose` (the caller has had its tokens scored). Never raises."""
        self.raw_chars += step.raw_chars
        self._open_segment = step.open_segment
        self._boundaries.extend(step.boundaries)
        if step.pending is None:
            if step.normalized_text:
                self._pending_parts.append(step.normalized_text)
                self._pending_chars += len(step.normalized_text)
        else:
            self._pending_parts = [step.pending] if step.pending else []
            self._pending_chars = len(step.pending)
        self.committed_normalized = step.committed_normalized
        self._tail = step.tail

    def add(self, text: str) -> list[MonitoredToken]:
        """Append text and commit at once (no monitor in between); return the tokens that became final."""
        step = self.propose(text)
        self.accept(step)
        return step.tokens

    def flush(self) -> list[MonitoredToken]:
        """The text is complete: commit and return every remaining token."""
        step = self.propose("", final=True)
        self.accept(step)
        return step.tokens

    def raw_position(self, normalized_position: int) -> int:
        """The longest raw prefix whose normal form lies within the first ``normalized_position`` normalised chars.

        Args:
            normalized_position: at least the position last passed to :meth:`forget` (positions only grow).

        Returns:
            A raw character count at a segment boundary (the position itself without a normaliser).
        """
        if self._normalize is None:
            return min(normalized_position, self.raw_chars)
        best = self._boundaries[0][0]
        for raw, normalized in self._boundaries:
            if normalized > normalized_position:
                break
            best = raw
        return best

    def forget(self, normalized_position: int) -> None:
        """Drop the segment boundaries before ``normalized_position`` (no later query goes below it)."""
        boundaries = self._boundaries
        while len(boundaries) > 1 and boundaries[1][1] <= normalized_position:
            boundaries.popleft()

    # ------------------------------------------------------------------------------------------------ internals

    def _starts_segment(self, segment: str, char: str) -> bool:
        """Whether ``char`` starts a new segment after ``segment``: a starter that does not combine with it."""
        if char.isascii():
            return True  # ASCII characters are starters and nothing composes with a preceding character into them
        # A starter whose decomposition starts with a combining character (e.g. U+0F73) can be reordered with the
        # combining characters before it: never a boundary.
        if unicodedata.combining(char) or unicodedata.combining(unicodedata.normalize("NFKD", char)[0]):
            return False
        normalize = self._normalize
        return normalize(segment + char) == normalize(segment) + normalize(char)

    def _normal_form(self, segment: str) -> str:
        if self._ascii_fixed and segment.isascii():
            return segment
        return self._normalize(segment)

    def _segment(self, text: str, final: bool) -> tuple[str, list[tuple[int, int]], str]:
        """Close the segments that ``text`` completes: their normal form, the new boundaries, the open segment."""
        if self._normalize is None:
            return text, [], ""
        pieces: list[str] = []
        boundaries: list[tuple[int, int]] = []
        raw, normalized = self._boundaries[-1]
        segment = self._open_segment
        for char in text:
            if segment and self._starts_segment(segment, char):
                form = self._normal_form(segment)
                pieces.append(form)
                raw, normalized = raw + len(segment), normalized + len(form)
                boundaries.append((raw, normalized))
                segment = char
            else:
                segment += char
        if final and segment:
            form = self._normal_form(segment)
            pieces.append(form)
            boundaries.append((raw + len(segment), normalized + len(form)))
            segment = ""
        return "".join(pieces), boundaries, segment

    def _may_start_pre_token(self, normalized: str) -> bool:
        """Whether appending ``normalized`` may have started a new pre-token (False only when it surely did not)."""
        if not normalized:
            return False
        if self._pre_tokenize is None:
            return True
        # The same window start on both sides: the pre-tokens of the window grow in number exactly when the new
        # text starts one (a window that starts inside a word only cuts that word short on both sides).
        return len(self._pre_tokenize(self._tail + normalized)) > len(self._pre_tokenize(self._tail))

    def _commit(
        self, pending: str, base: int, keep_words: int
    ) -> tuple[list[MonitoredToken], list[str], list[str], int]:
        """Encode ``pending`` (which starts at normalised position ``base``); commit all but ``keep_words`` words.

        Returns:
            The committed tokens, their texts, the committed text cut at their starts, and the committed length.
        """
        if not pending:
            return [], [], [], 0
        encoding = self.encoder.encode(pending, add_special_tokens=False)
        ids, offsets, words = encoding.ids, encoding.offsets, encoding.word_ids
        distinct = list(dict.fromkeys(words))
        if len(distinct) <= keep_words:
            return [], [], [], 0
        held = set(distinct[len(distinct) - keep_words:]) if keep_words else set()
        cut = next((i for i, word in enumerate(words) if word in held), len(ids))
        tokens = [MonitoredToken(ids[i], base + offsets[i][0], base + offsets[i][1]) for i in range(cut)]
        texts = [pending[offsets[i][0]: offsets[i][1]] for i in range(cut)]
        # The next pending text starts where the first held token starts, i.e. at a pre-token boundary.
        end = offsets[cut][0] if cut < len(ids) else len(pending)
        starts = [0] + [offsets[i][0] for i in range(1, cut)] + [end]
        pieces = [pending[starts[i]: max(starts[i], starts[i + 1])] for i in range(cut)]
        return tokens, texts, pieces, end

    def _self_check(self) -> None:
        tokenizer = self.tokenizer
        try:
            failure = _SELF_CHECKED[tokenizer]
        except (KeyError, TypeError):
            probe = IncrementalTokenizer(tokenizer, self_check=False)
            streamed: list[int] = []
            for char in _SELF_CHECK_TEXT:
                streamed += [t.token_id for t in probe.add(char)]
            streamed += [t.token_id for t in probe.flush()]
            expected = plain_text_backend(tokenizer).encode(_SELF_CHECK_TEXT, add_special_tokens=False).ids
            failure = None
            if streamed != expected:
                failure = (f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) cannot be "
                           f"re-tokenised incrementally: encoding a text in pieces differs from encoding it whole "
                           f"(typical of SentencePiece tokenizers that add a prefix space). Use a byte-level BPE "
                           f"monitor tokenizer.")
            try:
                _SELF_CHECKED[tokenizer] = failure
            except TypeError:
                pass
        if failure is not None:
            raise ValueError(failure)
