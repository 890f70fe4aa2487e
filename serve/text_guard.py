"""Guard a text stream with the streaming monitor when the monitored LLM does not share the monitor's tokenizer.

An LLM API streams text deltas (any chunking: empty chunks, a word split across chunks, bytes that split a UTF-8
character). The guard re-tokenises the text incrementally with the *monitor's* tokenizer
(``serve/incremental_tokenizer.py``) and pushes to the monitor only tokens that more text can no longer change, so
the monitored token sequence is exactly the plain-text tokenisation of the full text (what the monitor was trained
on, ``utils/text_encoding.py``), however the text was chunked: strings such as ``<|im_end|>`` are always text, and a
normalising tokenizer (Qwen2.5: NFC) sees the normal form of the whole text.

What the user sees (``hold_back`` chooses):

- **hold-back** (the default, because safety comes first): text is released only after the monitor has scored
  the tokens that cover it, so no unscored text ever reaches the user. The released text is always a prefix of the
  text received, and its normal form a prefix of the scored tokens' text. The cost is latency: the last couple of
  words of the stream (and an unfinished combining sequence) wait for the next delta (or for ``finish``).
- **pass-through**: text is released as it arrives; the monitor scores it a couple of words behind, so a stop can
  come after the user has already seen up to ~2 words beyond the stop token (reported as ``leaked_chars``).

After a stop, in both modes, the user has seen the response text up to (not including) the token that triggered
the stop (plus, in pass-through mode, whatever had already been released), followed by the stop notice; the guard
releases nothing more and later deltas are ignored (the caller should cut the upstream generation).

Failures are transactional: ``feed``, ``finish``, ``feed_many`` and ``finish_many`` first validate every guard and
delta, then work out what each guard would commit without changing it, then have the monitor score all new tokens in
one batched push, and only then advance the guards (re-tokeniser, released count, UTF-8 decoder state). A call that
raises (a bad delta, a guard passed twice, a stream beyond the monitor's maximum length, an error inside the model)
has changed no guard, released nothing and can be retried or the guard closed. A stream that outgrew the monitor's
maximum length keeps refusing with ``StreamLengthError``: close it and cut the upstream generation.

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

from serve.incremental_tokenizer import HELD_WORDS, IncrementalTokenizer, MonitoredToken, TokenizerStep
from serve.monitor import CategoryAnnotation, PushResult, StopEvent, StreamingMonitor, StreamLengthError, StreamState
from utils.text_encoding import check_unicode

__all__ = ["STOP_NOTICE", "HELD_WORDS", "IncrementalTokenizer", "MonitoredToken", "GuardStop", "GuardUpdate",
           "TextStreamGuard", "start_guards", "feed_many", "finish_many"]

STOP_NOTICE = "[response stopped by the content monitor]"


@dataclass(frozen=True)
class GuardStop:
    """The stop signal of a guarded text stream.

    Attributes:
        event: the monitor's stop event (index among the monitored response tokens, token id, score, count, rule).
        char_start: where the stop token starts in the response text; the user sees ``text[:char_start]`` at most
            (pass-through mode may already have released more: see ``leaked_chars``). With a normalising tokenizer
            it is the start of the combining sequence that holds the token's start.
        token_text: the stop token's text (may be part of a character for byte-level tokens: then the whole char),
            in the tokenizer's normal form.
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
        token_texts: the text of each monitored token, in the tokenizer's normal form, cut so that together they are
            exactly the newly scored text (a character that several byte-level tokens share goes to the last).
        raw_token_texts: the same cut in the text as received (what a user is shown): one piece per token, cut at
            the segment boundary at or before each token's start, the stop token and those after it ``""``.
            Together they are exactly the newly scored received text up to the stop token, so in hold-back mode
            exactly ``released`` (a display can colour every released character with its token's score). Tokens
            that start inside one combining sequence (``o`` + U+0308 + U+0323, a normalisation segment) share its
            text as ``token_texts`` share a character: it goes to the last of them, the others get ``""``.
        stop: set on the call in which the monitor stopped the stream.
        stopped: whether the stream is stopped (in this or an earlier call).
        finished: whether the stream is over (finished or stopped).
        category_probs: with a category head, each monitored token's category distribution (as ``token_ids``);
            None without a head or without new tokens.
        annotations: firings of the rule in this call that the category policy let through.
    """

    released: str = ""
    token_ids: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)
    raw_token_texts: list[str] = field(default_factory=list)
    stop: GuardStop | None = None
    stopped: bool = False
    finished: bool = False
    category_probs: list[list[float]] | None = None
    annotations: list[CategoryAnnotation] = field(default_factory=list)


@dataclass(frozen=True)
class _GuardStep:
    """What one call would do to one guard, worked out before anything changes."""

    text: str  # the decoded delta
    decoder_state: tuple[bytes, int]
    tokens: TokenizerStep | None  # None: the guard is stopped, nothing to do


class TextStreamGuard:
    """Monitor one text stream (see the module docstring).

    Args:
        monitor: a monitor with a tokenizer.
        prompt: the prompt text (encoded by the monitor like the training data); or ``prompt_ids``.
        hold_back: True (default) releases only scored text; False releases text on arrival.
        notice: the stop notice shown to the user.
        state: instead of a prompt, a stream of ``monitor`` that is open and has no response tokens yet (what
            :func:`start_guards` passes after starting many streams in one batched forward).

    Raises:
        ValueError: the monitor has no tokenizer, or the tokenizer fails the self-check; a ``state`` that is not a
            fresh open stream of this monitor; the monitor's ``start`` errors for a bad or over-long prompt.
    """

    def __init__(
        self,
        monitor: StreamingMonitor,
        prompt: str | None = None,
        *,
        prompt_ids: Sequence[int] | None = None,
        hold_back: bool = True,
        notice: str = STOP_NOTICE,
        state: StreamState | None = None,
    ) -> None:
        if not isinstance(monitor, StreamingMonitor):
            raise TypeError(f"TextStreamGuard needs a StreamingMonitor, got {type(monitor).__name__}")
        if monitor.tokenizer is None:
            raise ValueError("the text guard needs a monitor with a tokenizer (a checkpoint folder with tokenizer "
                             "files)")
        self.monitor = monitor
        self.retokenizer = IncrementalTokenizer(monitor.tokenizer)
        self.hold_back = hold_back
        self.notice = notice
        if state is not None:
            if prompt is not None or prompt_ids is not None:
                raise ValueError("pass a prompt, prompt_ids or a started state, not several")
            if state._monitor is not monitor or state.closed or state.n_response_tokens:
                raise ValueError("state must be an open stream of this monitor with no response tokens yet")
        self.state: StreamState = state if state is not None else monitor.start(prompt, prompt_ids=prompt_ids)
        self.released_chars = 0
        self.stop: GuardStop | None = None
        self.finished = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The text received: released parts, then the parts not released yet (joined only when needed, so that a
        # long stream does not copy its whole text on every delta).
        self._released_parts: list[str] = []
        self._unreleased_parts: list[str] = []

    @property
    def text(self) -> str:
        """The response text received so far (joined on each access)."""
        return self.released_text + "".join(self._unreleased_parts)

    @property
    def scored_chars(self) -> int:
        """Characters of :attr:`text` (from its start) that tokens the monitor has scored cover completely.

        The same as ``retokenizer.committed_chars``; ``retokenizer.committed_normalized`` counts the scored text in
        the tokenizer's normal form (equal for a tokenizer without a normaliser, such as SmolLM2's). In hold-back
        mode the released text never goes beyond this.
        """
        return self.retokenizer.committed_chars

    @property
    def unscored_text(self) -> str:
        """The text received after :attr:`scored_chars` (held back, in hold-back mode)."""
        if self.stop is not None:
            return ""
        text = "".join(self._unreleased_parts)
        if self.hold_back or self.finished:
            return text[self.scored_chars - self.released_chars:]
        return self.text[self.scored_chars:]

    @property
    def released_text(self) -> str:
        """Everything the user has been shown so far (without the stop notice)."""
        if len(self._released_parts) > 1:
            self._released_parts = ["".join(self._released_parts)]
        return self._released_parts[0] if self._released_parts else ""

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

    def _decode(self, delta: str | bytes | None, final: bool) -> tuple[str, tuple[bytes, int]]:
        """The text of ``delta`` and the decoder state after it; the decoder itself is left as it was."""
        decoder = self._decoder
        before = decoder.getstate()
        if delta is None:
            delta = b""
        if isinstance(delta, (bytes, bytearray, memoryview)):
            try:
                # Bytes of an incomplete trailing character become U+FFFD at the end rather than vanishing.
                return decoder.decode(bytes(delta), final=final), decoder.getstate()
            finally:
                decoder.setstate(before)
        if not isinstance(delta, str):
            raise TypeError(f"a text delta must be str, bytes or None, got {type(delta).__name__}")
        if delta and before[0]:
            raise ValueError("a str delta arrived while a UTF-8 character from earlier bytes deltas is incomplete; "
                             "send the rest of that character as bytes first")
        check_unicode(delta, "the text delta")
        return delta, before

    def _propose(self, delta: str | bytes | None, final: bool) -> _GuardStep:
        """Work out the call without changing anything (raises on a bad delta)."""
        if self.stop is not None:
            return _GuardStep("", self._decoder.getstate(), None)
        text, decoder_state = self._decode(delta, final)
        return _GuardStep(text, decoder_state, self.retokenizer.propose(text, final))

    def _take_unreleased(self, count: int) -> str:
        """Move the first ``count`` unreleased characters to the released text; return them."""
        if count <= 0:
            return ""
        pending = "".join(self._unreleased_parts)
        released, rest = pending[:count], pending[count:]
        self._unreleased_parts = [rest] if rest else []
        self._released_parts.append(released)
        self.released_chars += len(released)
        return released

    def _text_from(self, start: int) -> str:
        """``text[start:]`` without joining the whole text (``start`` is near its end: the last scored point)."""
        pending = "".join(self._unreleased_parts)
        if start >= self.released_chars:
            return pending[start - self.released_chars:]
        parts, at = [], self.released_chars
        for part in reversed(self._released_parts):
            parts.append(part)
            at -= len(part)
            if at <= start:
                break
        return "".join(reversed(parts))[start - at:] + pending

    def _raw_pieces(self, tokens: Sequence[MonitoredToken], stop_at: int, scored_from: int, final: bool) -> list[str]:
        """The received text of each token of a step (see ``GuardUpdate.raw_token_texts``); after ``accept``."""
        if not tokens:
            return []
        retokenizer = self.retokenizer
        if stop_at < len(tokens):
            end = retokenizer.raw_position(tokens[stop_at].start)
        else:
            end = retokenizer.raw_chars if final else retokenizer.committed_chars
        text = self._text_from(scored_from)
        bounds = [scored_from] + [min(max(retokenizer.raw_position(token.start), scored_from), end)
                                  for token in tokens[1:stop_at]] + [end]
        for i in range(1, len(bounds)):  # segment boundaries never go back; this only guards the invariant
            bounds[i] = max(bounds[i], bounds[i - 1])
        pieces = [text[bounds[i] - scored_from: bounds[i + 1] - scored_from] for i in range(stop_at)]
        return pieces + [""] * (len(tokens) - stop_at)

    def _accept(self, step: _GuardStep, result: PushResult | None, final: bool) -> GuardUpdate:
        """Apply a step whose tokens the monitor has scored (``result``). Never raises."""
        update = GuardUpdate()
        if step.tokens is not None:
            tokens = step.tokens.tokens
            update.token_ids = [t.token_id for t in tokens]
            update.token_texts = list(step.tokens.token_pieces)
            update.scores = list(result.scores) if result is not None else []
            if result is not None:
                update.category_probs, update.annotations = result.category_probs, list(result.annotations)
            self._decoder.setstate(step.decoder_state)
            retokenizer = self.retokenizer
            scored_from = retokenizer.committed_chars
            retokenizer.accept(step.tokens)
            if step.text:
                self._unreleased_parts.append(step.text)
            at = len(tokens)
            if result is not None and result.stop is not None:
                at = result.stop.index - (self.state.n_response_tokens - len(tokens))
            update.raw_token_texts = self._raw_pieces(tokens, at, scored_from, final)
            if result is not None and result.stop is not None:
                stop_token = tokens[at]
                char_start = retokenizer.raw_position(stop_token.start)
                update.released = self._take_unreleased(char_start - self.released_chars)
                self.stop = GuardStop(event=result.stop, char_start=char_start, token_text=step.tokens.token_texts[at],
                                      released_chars=self.released_chars,
                                      leaked_chars=max(0, self.released_chars - char_start), notice=self.notice)
                update.stop = self.stop
                self.monitor.close(self.state)
            else:
                if final or not self.hold_back:
                    target = retokenizer.raw_chars
                else:
                    target = retokenizer.committed_chars
                update.released = self._take_unreleased(target - self.released_chars)
            retokenizer.forget(retokenizer.committed_normalized)
        update.stopped = self.stop is not None
        if final:
            self.finished = True
            if not self.state.closed:
                self.monitor.close(self.state)
        update.finished = self.finished or update.stopped
        return update


def start_guards(
    monitor: StreamingMonitor, prompts: Sequence[str], *, hold_back: bool = True, notice: str = STOP_NOTICE
) -> list[TextStreamGuard]:
    """Start one guard per prompt, running all prompts through the monitor in one batched forward.

    Raises:
        As :class:`TextStreamGuard` and :meth:`StreamingMonitor.start_many` (nothing is opened when it raises).
    """
    states = monitor.start_many(prompts)
    try:
        return [TextStreamGuard(monitor, hold_back=hold_back, notice=notice, state=state) for state in states]
    except BaseException:
        for state in states:
            monitor.close(state)
        raise


def _check_batch(guards: Sequence[TextStreamGuard], deltas: Sequence[object] | None, final: bool) -> None:
    """Refuse a batch before anything changes: wrong types, lengths, monitors, a guard twice, a finished guard."""
    if deltas is not None and len(guards) != len(deltas):
        raise ValueError(f"got {len(guards)} guards but {len(deltas)} deltas")
    seen: set[int] = set()
    monitor = None
    for number, guard in enumerate(guards):
        if not isinstance(guard, TextStreamGuard):
            raise TypeError(f"guard {number} is a {type(guard).__name__}, not a TextStreamGuard")
        if id(guard) in seen:
            raise ValueError(f"guard {number} (stream {guard.state.stream_id}) appears twice in one call; join its "
                             f"deltas into one")
        seen.add(id(guard))
        monitor = guard.monitor if monitor is None else monitor
        if guard.monitor is not monitor:
            raise ValueError("guards fed together must share one monitor")
        if guard.finished and not final:
            raise RuntimeError(f"guard {number} (stream {guard.state.stream_id}): this guard is finished; start a "
                               f"new TextStreamGuard for a new response")


def _run(guards: Sequence[TextStreamGuard], deltas: Sequence[str | bytes | None], final: bool) -> list[GuardUpdate]:
    """The transaction behind every guard call (module docstring): validate, propose, score, then accept."""
    _check_batch(guards, deltas, final)
    if not guards:
        return []
    steps = []
    for number, (guard, delta) in enumerate(zip(guards, deltas)):
        try:
            steps.append(guard._propose(delta, final))
        except (TypeError, ValueError) as err:
            if len(guards) == 1:
                raise
            raise type(err)(f"guard {number} (stream {guard.state.stream_id}): {err}") from err
    # Only guards with new tokens go to the monitor (an empty push would be a no-op that still costs a call).
    live = [i for i, step in enumerate(steps) if step.tokens is not None and step.tokens.tokens]
    results: list[PushResult] = []
    try:
        if live:
            results = guards[0].monitor.push_many([guards[i].state for i in live],
                                                  [[t.token_id for t in steps[i].tokens.tokens] for i in live])
    except StreamLengthError as err:
        raise StreamLengthError(f"{err}. Text guard: nothing of this call was released; the response is longer "
                                f"than the monitor can score, so close the guard (guard.close()) and cut the "
                                f"upstream generation", stream_id=err.stream_id) from err
    by_guard = dict(zip(live, results))
    return [guard._accept(step, by_guard.get(i), final) for i, (guard, step) in enumerate(zip(guards, steps))]


def feed_many(guards: Sequence[TextStreamGuard], deltas: Sequence[str | bytes | None]) -> list[GuardUpdate]:
    """Feed one delta to each of several guards, scoring all their new tokens in one batched forward.

    Args:
        guards: guards sharing one monitor (each at most once).
        deltas: for each guard, its next delta: str, UTF-8 bytes (a character may be split across deltas), or an
            empty chunk / None (no-op).

    Returns:
        One :class:`GuardUpdate` per guard.

    Raises:
        RuntimeError: feeding a finished guard. TypeError/ValueError: a delta of another type, a str delta while a
        UTF-8 character from bytes deltas is incomplete, a str with a lone surrogate, a guard twice, guards of
        different monitors. The monitor's ``StreamingError`` (e.g. ``StreamLengthError``) and any error of the
        model itself. Whatever is raised, no guard has changed and nothing was released.
    """
    return _run(guards, deltas, final=False)


def finish_many(guards: Sequence[TextStreamGuard]) -> list[GuardUpdate]:
    """Finish several guards at once (see :meth:`TextStreamGuard.finish`); finishing twice returns empty updates.

    Raises:
        As :func:`feed_many` (no guard changes when anything is raised).
    """
    _check_batch(guards, None, final=True)
    pending = [g for g in guards if not g.finished]
    updates = dict(zip(map(id, pending), _run(pending, [None] * len(pending), final=True)))
    return [updates.get(id(g), GuardUpdate(stopped=g.stop is not None, finished=True)) for g in guards]
