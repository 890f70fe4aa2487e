"""Guard a text stream with the streaming monitor when the monitored LLM does not share the monitor's tokenizer.

An LLM API streams text deltas (any chunking: empty chunks, a word split across chunks, bytes that split a UTF-8
character). The guard re-tokenises the text incrementally with the *monitor's* tokenizer and pushes to the monitor
only tokens that more text can no longer change, so the monitored token sequence is exactly the tokenisation of
the full text (what the monitor was trained on), however the text was chunked.

Which tokens are final: a byte-level BPE tokenizer first splits text into pre-tokens ("words": a letter run with
its leading space, a digit, a punctuation run, a whitespace run) and never merges across them. Appending text can
change the last pre-token ("hel" + "lo") and, through the pre-tokenizer's look-ahead, the one before it (a trailing
``'`` becomes the contraction ``'ll``; a trailing space joins the next word). The guard therefore holds back the
last :data:`HELD_WORDS` pre-tokens and commits everything before them; :meth:`TextStreamGuard.finish` flushes the
rest. A self-check at construction rejects tokenizers for which this is not exact (e.g. SentencePiece tokenizers
that add a prefix space to every encoded piece).

What the user sees (``hold_back`` chooses):

- **hold-back** (the default, because safety comes first): text is released only after the monitor has scored
  the tokens that cover it, so no unscored text ever reaches the user. The cost is latency: the last couple of
  words of the stream wait for the next delta (or for ``finish``).
- **pass-through**: text is released as it arrives; the monitor scores it a couple of words behind, so a stop can
  come after the user has already seen up to ~2 words beyond the stop token (reported as ``leaked_chars``).

After a stop, in both modes, the user has seen the response text up to (not including) the token that triggered
the stop (plus, in pass-through mode, whatever had already been released), followed by the stop notice; the guard
releases nothing more and later deltas are ignored (the caller should cut the upstream generation).

Example::

    guard = TextStreamGuard(monitor, prompt)
    for delta in llm_stream:
        update = guard.feed(delta)
        show(update.released)
        if update.stop:
            show(update.stop.notice)
            break
    else:
        show(guard.finish().released)
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from serve.monitor import StopEvent, StreamingMonitor, StreamState

STOP_NOTICE = "[response stopped by the content monitor]"
# Pre-tokens held back at the end of the text: the trailing partial word and the one before it (see module doc).
HELD_WORDS = 2
# Probe for the construction-time self-check: contractions split across chunks, digits, whitespace runs, emoji.
_SELF_CHECK_TEXT = "It'll cost $1,234.5 -- don't  go!\n\n\tNew para 😀 café."


@dataclass(frozen=True)
class MonitoredToken:
    """A token committed to the monitor, with its character span in the response text."""

    token_id: int
    start: int
    end: int


class IncrementalTokenizer:
    """Re-tokenise a growing text, committing only tokens that more text can no longer change.

    Args:
        tokenizer: a fast (Rust-backed) tokenizer; byte-level BPE such as Qwen2.5's or SmolLM2's.

    Raises:
        ValueError: a slow tokenizer (no word ids / offsets), or one for which committing all but the last
            pre-tokens is not exact (the self-check).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, self_check: bool = True) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; the text guard needs word ids and "
                             f"character offsets (load the tokenizer with AutoTokenizer, use_fast=True)")
        self.tokenizer = tokenizer
        self.text = ""
        self.committed_chars = 0
        if self_check:
            self._self_check()

    def _self_check(self) -> None:
        probe = IncrementalTokenizer(self.tokenizer, self_check=False)
        streamed: list[int] = []
        for char in _SELF_CHECK_TEXT:
            streamed += [t.token_id for t in probe.add(char)]
        streamed += [t.token_id for t in probe.flush()]
        expected = self.tokenizer(_SELF_CHECK_TEXT, add_special_tokens=False)["input_ids"]
        if streamed != expected:
            raise ValueError(
                f"{type(self.tokenizer).__name__} ({getattr(self.tokenizer, 'name_or_path', '?')}) cannot be "
                f"re-tokenised incrementally: encoding a text in pieces differs from encoding it whole (typical of "
                f"SentencePiece tokenizers that add a prefix space). Use a byte-level BPE monitor tokenizer.")

    def _encode_pending(self) -> tuple[list[int], list[tuple[int, int]], list[int | None]]:
        encoding = self.tokenizer(self.text[self.committed_chars:], add_special_tokens=False,
                                  return_offsets_mapping=True)
        return encoding["input_ids"], encoding["offset_mapping"], encoding.word_ids()

    def _commit(self, keep_words: int) -> list[MonitoredToken]:
        if self.committed_chars == len(self.text):
            return []
        ids, offsets, words = self._encode_pending()
        distinct = list(dict.fromkeys(words))
        if len(distinct) <= keep_words:
            return []
        held = set(distinct[len(distinct) - keep_words:]) if keep_words else set()
        cut = next((i for i, word in enumerate(words) if word in held), len(ids))
        base = self.committed_chars
        committed = [MonitoredToken(ids[i], base + offsets[i][0], base + offsets[i][1]) for i in range(cut)]
        # The next pending text starts where the first held token starts, i.e. at a pre-token boundary.
        self.committed_chars = base + offsets[cut][0] if cut < len(ids) else len(self.text)
        return committed

    def add(self, text: str) -> list[MonitoredToken]:
        """Append text; return the tokens that became final (possibly none)."""
        if text:
            self.text += text
        return self._commit(HELD_WORDS)

    def flush(self) -> list[MonitoredToken]:
        """The text is complete: return every remaining token."""
        return self._commit(0)


@dataclass(frozen=True)
class GuardStop:
    """The stop signal of a guarded text stream.

    Attributes:
        event: the monitor's stop event (index among the monitored response tokens, token id, score, count, rule).
        char_start: where the stop token starts in the response text; the user sees ``text[:char_start]`` at most
            (pass-through mode may already have released more: see ``leaked_chars``).
        token_text: the stop token's text (may be part of a character for byte-level tokens: then the whole char).
        released_chars: characters of the response the user has seen in total.
        leaked_chars: characters the user saw beyond the stop token (always 0 in hold-back mode).
        notice: the stop notice to show the user.
    """

    event: StopEvent
    char_start: int
    token_text: str
    released_chars: int
    leaked_chars: int
    notice: str


@dataclass
class GuardUpdate:
    """The result of one ``feed``/``finish`` call.

    Attributes:
        released: new text the user may see now (may be empty).
        token_ids, scores: the tokens monitored during this call and their scores.
        stop: set on the call in which the monitor stopped the stream.
        stopped: whether the stream is stopped (in this or an earlier call).
        finished: whether the stream is over (finished or stopped).
    """

    released: str = ""
    token_ids: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    stop: GuardStop | None = None
    stopped: bool = False
    finished: bool = False


class TextStreamGuard:
    """Monitor one text stream (see the module docstring).

    Args:
        monitor: a monitor with a tokenizer.
        prompt: the prompt text (encoded by the monitor like the training data); or ``prompt_ids``.
        hold_back: True (default) releases only scored text; False releases text on arrival.
        notice: the stop notice shown to the user.

    Raises:
        ValueError: the monitor has no tokenizer, or the tokenizer fails the self-check.
    """

    def __init__(
        self,
        monitor: StreamingMonitor,
        prompt: str | None = None,
        *,
        prompt_ids: Sequence[int] | None = None,
        hold_back: bool = True,
        notice: str = STOP_NOTICE,
    ) -> None:
        if monitor.tokenizer is None:
            raise ValueError("the text guard needs a monitor with a tokenizer (a checkpoint folder with tokenizer "
                             "files)")
        self.monitor = monitor
        self.retokenizer = IncrementalTokenizer(monitor.tokenizer)
        self.hold_back = hold_back
        self.notice = notice
        self.state: StreamState = monitor.start(prompt, prompt_ids=prompt_ids)
        self.released_chars = 0
        self.stop: GuardStop | None = None
        self.finished = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def text(self) -> str:
        """The response text received so far."""
        return self.retokenizer.text

    @property
    def released_text(self) -> str:
        """Everything the user has been shown so far (without the stop notice)."""
        return self.text[: self.released_chars]

    def feed(self, delta: str | bytes | None) -> GuardUpdate:
        """Take the next text delta (str, UTF-8 bytes, or an empty/None chunk); see :func:`feed_many`."""
        return feed_many([self], [delta])[0]

    def finish(self) -> GuardUpdate:
        """The upstream stream ended: score the held-back tail, release it (if not stopped), close the stream."""
        return finish_many([self])[0]

    def close(self) -> None:
        """Abandon the stream (e.g. the client went away) without scoring the tail."""
        self.finished = True
        if not self.state.closed:
            self.monitor.close(self.state)

    # --------------------------------------------------------------------------------------------- internals

    def _decode(self, delta: str | bytes | None) -> str:
        if delta is None:
            return ""
        if isinstance(delta, (bytes, bytearray)):
            return self._decoder.decode(bytes(delta))
        if not isinstance(delta, str):
            raise TypeError(f"a text delta must be str, bytes or None, got {type(delta).__name__}")
        if delta and self._decoder.getstate()[0]:
            raise ValueError("a str delta arrived while a UTF-8 character from earlier bytes deltas is incomplete; "
                             "send the rest of that character as bytes first")
        return delta

    def _prepare(self, delta: str | bytes | None, final: bool) -> list[MonitoredToken]:
        if self.finished:
            raise RuntimeError("this guard is finished; start a new TextStreamGuard for a new response")
        if self.stop is not None:
            return []
        text = self._decode(delta)
        if final:
            # Bytes of an incomplete trailing character become U+FFFD rather than vanishing.
            text += self._decoder.decode(b"", final=True)
            return self.retokenizer.add(text) + self.retokenizer.flush()
        return self.retokenizer.add(text)

    def _apply(self, tokens: list[MonitoredToken], result, final: bool) -> GuardUpdate:
        update = GuardUpdate(token_ids=[t.token_id for t in tokens],
                             scores=list(result.scores) if result is not None else [])
        before = self.released_chars
        if self.stop is not None:
            update.scores = []  # stopped earlier: nothing is scored or released any more
        elif result is not None and result.stop is not None:
            at = result.stop.index - (self.state.n_response_tokens - len(tokens))
            stop_token = tokens[at]
            self.released_chars = max(self.released_chars, stop_token.start)
            self.stop = GuardStop(event=result.stop, char_start=stop_token.start,
                                  token_text=self.text[stop_token.start:stop_token.end],
                                  released_chars=self.released_chars,
                                  leaked_chars=max(0, self.released_chars - stop_token.start), notice=self.notice)
            update.stop = self.stop
            self.monitor.close(self.state)
        elif final or not self.hold_back:
            self.released_chars = len(self.text)
        else:
            self.released_chars = max(self.released_chars, self.retokenizer.committed_chars)
        update.released = self.text[before: self.released_chars]
        update.stopped = self.stop is not None
        if final:
            self.finished = True
            if not self.state.closed:
                self.monitor.close(self.state)
        update.finished = self.finished or update.stopped
        return update


def _run(guards: Sequence[TextStreamGuard], deltas: Sequence[str | bytes | None], final: bool) -> list[GuardUpdate]:
    if len(guards) != len(deltas):
        raise ValueError(f"got {len(guards)} guards but {len(deltas)} deltas")
    if not guards:
        return []
    monitor = guards[0].monitor
    if any(g.monitor is not monitor for g in guards):
        raise ValueError("guards fed together must share one monitor")
    token_lists = [g._prepare(d, final) for g, d in zip(guards, deltas)]
    live = [i for i, g in enumerate(guards) if g.stop is None]
    results = dict(zip(live, monitor.push_many([guards[i].state for i in live],
                                               [[t.token_id for t in token_lists[i]] for i in live])))
    return [g._apply(tokens, results.get(i), final) for i, (g, tokens) in enumerate(zip(guards, token_lists))]


def feed_many(guards: Sequence[TextStreamGuard], deltas: Sequence[str | bytes | None]) -> list[GuardUpdate]:
    """Feed one delta to each of several guards, scoring all their new tokens in one batched forward.

    Args:
        guards: guards sharing one monitor (each at most once).
        deltas: for each guard, its next delta: str, UTF-8 bytes (a character may be split across deltas), or an
            empty chunk / None (no-op).

    Returns:
        One :class:`GuardUpdate` per guard.

    Raises:
        RuntimeError: feeding a finished guard. TypeError/ValueError: a delta of another type, or a str delta
        while a UTF-8 character from bytes deltas is incomplete.
    """
    return _run(guards, deltas, final=False)


def finish_many(guards: Sequence[TextStreamGuard]) -> list[GuardUpdate]:
    """Finish several guards at once (see :meth:`TextStreamGuard.finish`); finishing twice returns empty updates."""
    pending = [g for g in guards if not g.finished]
    updates = dict(zip(map(id, pending), _run(pending, [None] * len(pending), final=True)))
    return [updates.get(id(g), GuardUpdate(stopped=g.stop is not None, finished=True)) for g in guards]
