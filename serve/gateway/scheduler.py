"""Continuous batching of monitor steps: every live stream's new text or tokens go through one batched forward.

The monitor (:class:`~serve.monitor.StreamingMonitor`) is not thread-safe and its forward blocks, so it lives in
one worker thread. The event loop only appends what a stream received to that stream's pending buffer
(:meth:`MonitoredStream.submit`) and waits for events; the worker repeatedly takes the pending input of every stream
that has some (at most ``max_batch_streams`` of them, oldest first), advances them all with one
:func:`~serve.text_guard.feed_many` (text from an upstream, through the text guard) or one
:meth:`~serve.monitor.StreamingMonitor.push_many` (token ids of a local generator with the monitor's tokenizer),
and hands each stream an event: the text it may now release, the scored tokens behind that text, a stop. Streams
join and leave between steps; a stream whose input arrived while a step ran joins the next one, with everything it
received meanwhile. So the monitor's cost per step grows slowly with the number of streams, and its latency stays
flat until the CPU or GPU is saturated.

Bounds: at most ``max_streams`` live streams (:class:`Overloaded` beyond, the gateway's 429), and per stream at most
``max_pending`` received-but-unscored characters (text) or tokens (ids): past that :meth:`MonitoredStream.wait_room`
makes its reader wait, which stops reading the upstream (TCP backpressure) or pauses the local generator.

Failures never take the worker down. Whatever one stream's input or state makes the worker raise, that stream
alone ends with an error event (a step that raises for a batch is retried stream by stream: the text guard and the
monitor change nothing when they raise, so the retry is exact) and the worker goes on; the observer counts it. Only
failures of the model itself follow the ``on_error`` policy: ``"close"`` (fail closed, the default) ends the stream
with an error and releases nothing unscored; ``"open"`` releases what it withheld and passes the rest of the
response through unmonitored, flagged as such. Anything input can cause (bad text, a response longer than the
monitor reads) fails closed whatever the policy, so that no upstream can choose to be unmonitored. If the worker
itself dies (a bug in this module), every live stream gets an error event, :attr:`MonitorScheduler.alive` turns
False (``/health`` answers 503) and new streams are refused with :class:`SchedulerUnavailable`.

A response longer than the monitor's maximum length (prompt and response) is scored as far as the monitor reads
(every token that surely fits), then ends as truncated: the scored text is released and the rest withheld, like a
generation cut at ``max_tokens`` (the gateway answers ``finish_reason: "length"``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from serve.gateway.detokenize import IncrementalDetokenizer
from serve.monitor import StopEvent, StreamingError, StreamingMonitor, StreamLengthError, StreamState
from serve.text_guard import GuardUpdate, TextStreamGuard, feed_many, finish_many

log = logging.getLogger("serve.gateway")

TEXT, IDS = "text", "ids"
# Steps and latencies kept for --stats-file and the benchmark (oldest dropped first).
STATS_WINDOW = 1_000_000


class Overloaded(Exception):
    """All stream slots are taken."""


class SchedulerUnavailable(RuntimeError):
    """The scheduler is stopped, or its worker died: it takes no streams or jobs."""


@dataclass
class StopDetails:
    """A stop: where and why (the stop token's text is deliberately not kept: it is never sent)."""

    event: StopEvent


@dataclass
class StreamEvent:
    """What the worker tells a stream after a step.

    Attributes:
        released: text the client may see now.
        tokens: the scored tokens behind ``released``, ``{"text", "score"}`` each (extension for the page).
        stop: set when the monitor stopped the stream in this step.
        finished: the stream's input is complete and fully scored (after :meth:`MonitoredStream.finish`), or it
            was truncated.
        truncated: the response outgrew the monitor's maximum length: what was scored is released, the rest
            withheld, and the stream takes no more input.
        error: the stream failed (a message of the gateway's own, safe to show a client).
        unmonitored: after a monitor failure under ``on_error="open"``: the rest passes through unscored.
        category_probs: with a category head, the category distribution of each of ``tokens`` (None without one).
        annotations: firings of the rule the category policy let through in this step
            (:class:`~serve.monitor.CategoryAnnotation`).
    """

    released: str = ""
    tokens: list[dict[str, Any]] = field(default_factory=list)
    stop: StopDetails | None = None
    finished: bool = False
    truncated: bool = False
    error: str | None = None
    unmonitored: bool = False
    category_probs: list[list[float]] | None = None
    annotations: list[Any] = field(default_factory=list)


def span_texts(tokenizer, segment: str, token_ids: Sequence[int]) -> list[str]:
    """Each token's text, for display: ``segment`` (whose tokenisation is ``token_ids``) cut at the tokens' offsets.

    The texts always concatenate to ``segment``; a character split over several byte-level tokens goes to the
    first of them. When the segment does not re-encode to ``token_ids`` the whole segment goes to the first token.
    """
    if not token_ids:
        return []
    encoding = tokenizer(segment, add_special_tokens=False, return_offsets_mapping=True)
    if encoding["input_ids"] != list(token_ids):
        return [segment] + [""] * (len(token_ids) - 1)
    bounds, cursor = [], 0
    for start, _ in encoding["offset_mapping"]:
        cursor = max(cursor, start)
        bounds.append(cursor)
    bounds[0] = 0
    bounds.append(len(segment))
    return [segment[bounds[i]:bounds[i + 1]] for i in range(len(token_ids))]


class MonitoredStream:
    """One live stream: its input buffer (filled by the event loop) and its events (filled by the worker).

    Create with :meth:`MonitorScheduler.open`; feed with :meth:`submit` (text for ``kind="text"``, token ids for
    ``kind="ids"``), call :meth:`finish` at the end of the input, read :meth:`next_event`, and always
    :meth:`MonitorScheduler.close` it.
    """

    def __init__(self, scheduler: "MonitorScheduler", stream_id: int, kind: str, prompt: str | None,
                 prompt_ids: Sequence[int] | None = None) -> None:
        self.scheduler, self.id, self.kind, self.prompt = scheduler, stream_id, kind, prompt
        self.prompt_ids = None if prompt_ids is None else list(prompt_ids)
        self.guard: TextStreamGuard | None = None
        self.state: StreamState | None = None
        self.detokenizer: IncrementalDetokenizer | None = None
        self.closed = False
        self.unmonitored = False
        self.received_text: list[str] = []
        self.received_ids: list[int] = []
        self.released_chars = 0
        self.tokens_scored = 0
        self.max_score: float | None = None
        # With a category head: the category distribution at the token of max_score.
        self.peak_category_probs: list[float] | None = None
        self.truncated = False  # worker side: the monitor's maximum length was reached
        # Guarded by the scheduler's lock.
        self._pending: list[Any] = []
        self._arrivals: list[float] = []
        self._pending_size = 0
        self._finish_requested = False
        self._failed = False  # the worker failed it; input that still arrives is not for the monitor
        # Event loop side: finish() came after the worker failed the stream but before the loop heard of it.
        self._finish_after_failure = False
        self._events: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()

    # ------------------------------------------------------------------------------------------- event loop

    def submit(self, piece: str | Sequence[int]) -> None:
        """Queue received text (``kind="text"``) or token ids (``kind="ids"``) for the next monitor step."""
        if self.closed:
            return
        if self.kind == TEXT:
            if not isinstance(piece, str):
                raise TypeError("a text stream takes str pieces")
            if not piece:
                return
            self.received_text.append(piece)
            size = len(piece)
        else:
            piece = [int(t) for t in piece]
            if not piece:
                return
            self.received_ids.extend(piece)
            size = len(piece)
        if self.unmonitored:
            self._deliver(StreamEvent(released=self._unreleased(), unmonitored=True))
            return
        self.scheduler._enqueue(self, piece, size)

    async def wait_room(self) -> None:
        """Wait while this stream has more unscored input than the scheduler's ``max_pending``."""
        await self._room.wait()

    def finish(self) -> None:
        """The input is complete: score (and release) the held-back tail in the next step."""
        if self.closed:
            return
        if self.unmonitored:
            self._deliver(StreamEvent(released=self._unreleased(), finished=True, unmonitored=True))
            return
        self.scheduler._enqueue(self, None, 0, finish=True)

    async def next_event(self) -> StreamEvent:
        """The next event from the worker (text to release, a stop, the end, an error)."""
        return await self._events.get()

    def interrupt(self, message: str) -> None:
        """End the stream from the event loop's side (source failure, shutdown): an error event, nothing released."""
        if not self.closed:
            self._events.put_nowait(StreamEvent(error=message))

    def chars_withheld(self) -> int:
        """Characters received but never released (the text after a stop)."""
        return max(0, len(self.text_received()) - self.released_chars)

    def text_received(self) -> str:
        """All text received so far (decoded for id streams)."""
        if self.kind == TEXT:
            return "".join(self.received_text)
        return self.scheduler.monitor.tokenizer.decode(self.received_ids, skip_special_tokens=True)

    def _unreleased(self) -> str:
        text = self.text_received()
        released, self.released_chars = text[self.released_chars:], len(text)
        return released

    def _deliver(self, event: StreamEvent) -> None:
        if self.closed:
            return
        if event.unmonitored:
            if event.error is not None:  # the monitor failed under on_error="open": release what it withheld
                event.released = self._unreleased()
                # Input and the end of input that reached the scheduler after the failure are not lost.
                event.finished = event.finished or self._finish_after_failure
            self.unmonitored = True
        else:
            self.released_chars += len(event.released)
        self._events.put_nowait(event)


@dataclass
class _OpenRequest:
    stream: MonitoredStream
    future: concurrent.futures.Future


@dataclass
class _Work:
    stream: MonitoredStream
    pieces: list[Any]
    arrivals: list[float]
    finish: bool


class MonitorScheduler:
    """Runs one monitor for many concurrent streams (see the module docstring).

    Args:
        monitor: the monitor (needs a tokenizer for text streams).
        max_streams: live streams at most (:meth:`open` raises :class:`Overloaded` beyond).
        max_batch_streams: streams advanced together in one step at most.
        max_pending: received-but-unscored characters (text) or tokens (ids) per stream before backpressure.
        hold_back: text streams release only scored text (True) or pass text through on arrival (False).
        on_error: ``close`` (fail closed) or ``open`` (pass the rest through unmonitored).
        observer: optional object with ``observe_step(seconds, streams, tokens)`` and ``observe_latency(seconds)``
            (the Prometheus metrics); called from the worker thread.
    """

    def __init__(self, monitor: StreamingMonitor, *, max_streams: int = 64, max_batch_streams: int = 64,
                 max_pending: int = 4096, hold_back: bool = True, on_error: str = "close",
                 observer: Any = None) -> None:
        if on_error not in ("close", "open"):
            raise ValueError(f"on_error must be 'close' or 'open', got {on_error!r}")
        self.monitor = monitor
        self.max_streams, self.max_batch_streams, self.max_pending = max_streams, max_batch_streams, max_pending
        self.hold_back, self.on_error, self.observer = hold_back, on_error, observer
        self.steps: deque[dict[str, float]] = deque(maxlen=STATS_WINDOW)
        self.latencies: deque[float] = deque(maxlen=STATS_WINDOW)
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._opens: list[_OpenRequest] = []
        self._closes: list[MonitoredStream] = []
        self._jobs: list[tuple[Callable[[StreamingMonitor], Any], concurrent.futures.Future]] = []
        self._ready: dict[int, MonitoredStream] = {}  # insertion order = waiting order
        self._live = 0
        self._open_states: dict[int, MonitoredStream] = {}
        self._stopping = False
        self.death: str | None = None  # why the worker died (an exception's type name), None while it runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._worker, name="scm-monitor", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- public API

    @property
    def live_streams(self) -> int:
        """Streams opened and not closed."""
        return self._live

    def open_states(self) -> int:
        """Monitor states not yet released by the worker (0 once every closed stream has been freed)."""
        with self._cond:
            return len(self._open_states)

    @property
    def alive(self) -> bool:
        """Whether the worker runs (False once it died, or after :meth:`stop`)."""
        return self._thread.is_alive() and self.death is None

    async def open(self, prompt: str | None, kind: str, *, prompt_ids: Sequence[int] | None = None) -> MonitoredStream:
        """Open a stream: start the monitor on the prompt (in the worker, between steps).

        Args:
            prompt: the prompt text the monitor reads (or None with ``prompt_ids``).
            kind: ``text`` (text deltas through the text guard) or ``ids`` (token ids of the monitor's tokenizer).
            prompt_ids: the prompt already encoded (``monitor.encode_prompt``), so that the worker, which every
                stream shares, does not spend time tokenising it.

        Raises:
            Overloaded: ``max_streams`` streams are live. SchedulerUnavailable: stopped, or the worker died.
            Whatever ``monitor.start`` raises (a too-long prompt).
        """
        if kind not in (TEXT, IDS):
            raise ValueError(f"kind must be {TEXT!r} or {IDS!r}, got {kind!r}")
        if (prompt is None) == (prompt_ids is None):
            raise ValueError("open() needs a prompt or prompt_ids")
        self._loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                raise SchedulerUnavailable(self._unavailable())
            if self._live >= self.max_streams:
                raise Overloaded(f"{self._live} live streams, the maximum")
            self._live += 1
            stream = MonitoredStream(self, next(self._ids), kind, prompt, prompt_ids)
            request = _OpenRequest(stream, concurrent.futures.Future())
            self._opens.append(request)
            self._cond.notify()
        try:
            await asyncio.wrap_future(request.future)
        except BaseException:
            # Cancelled while the worker opens it, or start() failed: the worker frees what it made.
            self.close(stream)
            raise
        return stream

    def close(self, stream: MonitoredStream) -> None:
        """Free a stream (idempotent): its slot now, its monitor state in the worker's next round."""
        with self._cond:
            if stream.closed:
                return
            stream.closed = True
            self._live -= 1
            self._ready.pop(stream.id, None)
            stream._pending, stream._arrivals, stream._pending_size = [], [], 0
            self._closes.append(stream)
            self._cond.notify()
        stream._room.set()

    async def run_job(self, job: Callable[[StreamingMonitor], Any]) -> Any:
        """Run ``job(monitor)`` in the worker between steps (moderations of finished texts); returns its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise SchedulerUnavailable(self._unavailable())
            self._jobs.append((job, future))
            self._cond.notify()
        return await asyncio.wrap_future(future)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after the work already queued (streams left open are freed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _unavailable(self) -> str:
        return "the monitor worker stopped" if self.death is not None else "the scheduler is stopped"

    def stats(self) -> dict[str, Any]:
        """Every recorded step (start time, seconds, streams, tokens, kind) and monitor-added latency."""
        return {"steps": list(self.steps), "latencies_s": list(self.latencies)}

    # ------------------------------------------------------------------------------------------- event loop side

    def _enqueue(self, stream: MonitoredStream, piece: Any, size: int, finish: bool = False) -> None:
        with self._cond:
            if stream.closed:
                return
            if stream._failed:
                # The failure event is on its way to the loop; under on_error="open" it releases everything
                # received (this piece included) and must also end the stream if the input is complete.
                stream._finish_after_failure = stream._finish_after_failure or finish
                return
            if finish:
                stream._finish_requested = True
            else:
                stream._pending.append(piece)
                stream._arrivals.append(time.perf_counter())
                stream._pending_size += size
                if stream._pending_size >= self.max_pending:
                    stream._room.clear()
            self._ready.setdefault(stream.id, stream)
            self._cond.notify()

    def _post(self, stream: MonitoredStream, event: StreamEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(stream._deliver, event)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            pass

    # ------------------------------------------------------------------------------------------- worker

    def _has_work(self) -> bool:
        return bool(self._opens or self._closes or self._jobs or self._ready)

    def _worker(self) -> None:
        try:
            self._serve()
        except BaseException as err:  # a bug in the loop below: end every stream rather than leave them hanging
            self._die(err)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._has_work() and not self._stopping:
                    self._cond.wait()
                if self._stopping and not (self._opens or self._closes or self._jobs):
                    leftovers = list(self._open_states.values())
                    self._ready.clear()
                    break
                opens, self._opens = self._opens, []
                closes, self._closes = self._closes, []
                jobs, self._jobs = self._jobs, []
                batch = self._take_ready()
            for stream in closes:
                self._release(stream)
            for request in opens:
                self._open(request)
            for job, future in jobs:
                self._run_job(job, future)
            if batch:
                self._step(batch)
        for stream in leftovers:
            self._release(stream)

    def _die(self, err: BaseException) -> None:
        """The worker is gone: refuse new work and end every live stream with an error event."""
        log.critical("the monitor worker died; every live stream is ended and new ones are refused", exc_info=err)
        with self._cond:
            self.death = type(err).__name__
            self._stopping = True
            streams = {**self._ready, **self._open_states}
            self._ready.clear()
            opens, self._opens = self._opens, []
            jobs, self._jobs = self._jobs, []
        for request in opens:
            _settle(request.future, exception=SchedulerUnavailable("the monitor worker stopped"))
        for _, future in jobs:
            _settle(future, exception=SchedulerUnavailable("the monitor worker stopped"))
        self._count("worker_down")
        for stream in streams.values():
            self._post(stream, StreamEvent(error="the monitor stopped working"))

    def _take_ready(self) -> list[_Work]:
        batch = []
        for stream_id in list(self._ready)[: self.max_batch_streams]:
            stream = self._ready.pop(stream_id)
            if stream.closed or stream.id not in self._open_states or self._done(stream):
                continue
            batch.append(_Work(stream, stream._pending, stream._arrivals, stream._finish_requested))
            stream._pending, stream._arrivals, stream._pending_size = [], [], 0
            stream._finish_requested = False
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(stream._room.set)
        return batch

    @staticmethod
    def _done(stream: MonitoredStream) -> bool:
        """Stopped, finished or truncated: the monitor takes no more input for it (the event loop closes it next)."""
        if stream.guard is not None:
            return stream.guard.finished or stream.guard.stop is not None
        return stream.state.closed or stream.state.stopped

    def _open(self, request: _OpenRequest) -> None:
        stream = request.stream
        try:
            if stream.kind == TEXT:
                stream.guard = TextStreamGuard(self.monitor, stream.prompt, prompt_ids=stream.prompt_ids,
                                               hold_back=self.hold_back)
                stream.state = stream.guard.state
            else:
                stream.state = self.monitor.start(stream.prompt, prompt_ids=stream.prompt_ids)
                stream.detokenizer = IncrementalDetokenizer(self.monitor.tokenizer)
        except Exception as err:  # a too-long prompt, an unusable tokenizer: the caller answers 4xx/5xx
            _settle(request.future, exception=err)
            return
        with self._cond:
            self._open_states[stream.id] = stream
        # Closed (cancelled) while it was being opened, or its opener is gone: free it at once.
        if not _settle(request.future, result=stream) or stream.closed:
            self._release(stream)

    def _release(self, stream: MonitoredStream) -> None:
        """Free a stream's monitor state (idempotent; a failure to free is logged, never raised)."""
        with self._cond:
            self._open_states.pop(stream.id, None)
        try:
            if stream.guard is not None and not stream.guard.finished:
                stream.guard.close()
            elif stream.state is not None and not stream.state.closed:
                self.monitor.close(stream.state)
        except Exception:
            log.exception("freeing the monitor state of stream %d failed", stream.id)
            self._count("internal")

    def _run_job(self, job: Callable[[StreamingMonitor], Any], future: concurrent.futures.Future) -> None:
        try:
            result = job(self.monitor)
        except Exception as err:
            _settle(future, exception=err)
        else:
            _settle(future, result=result)

    def _count(self, cause: str) -> None:
        if self.observer is not None:
            try:
                self.observer.observe_failure(cause)
            except Exception:
                log.exception("the scheduler's observer failed")

    def _record(self, kind: str, began: float, streams: int, tokens: int, works: Sequence[_Work]) -> None:
        done = time.perf_counter()
        seconds = done - began
        self.steps.append({"t": began, "seconds": seconds, "streams": streams, "tokens": tokens, "kind": kind})
        latencies = [done - arrival for work in works for arrival in work.arrivals]
        self.latencies.extend(latencies)
        if self.observer is not None:
            try:  # a step that scored must not raise after the fact (the caller would retry it)
                self.observer.observe_step(seconds, streams, tokens)
                for latency in latencies:
                    self.observer.observe_latency(latency)
            except Exception:
                log.exception("the scheduler's observer failed")

    # ------------------------------------------------------------------------------------------- steps

    def _step(self, batch: list[_Work]) -> None:
        text, ids = [w for w in batch if w.stream.kind == TEXT], [w for w in batch if w.stream.kind == IDS]
        if text:
            # A stream that could exceed the monitor's maximum length steps alone (it may be cut).
            risky, safe = [], []
            for work in text:
                try:
                    (risky if self._may_overflow(work) else safe).append(work)
                except Exception as err:
                    self._fail_on(work.stream, err)
            if safe:
                self._isolated(self._score_text, self._score_text_within_limit, safe)
            for work in risky:
                self._isolated(self._score_text_within_limit, self._score_text_within_limit, [work])
        if ids:
            self._isolated(self._score_ids, self._score_ids, ids)

    def _isolated(self, step: Callable[[list[_Work]], None], alone: Callable[[list[_Work]], None],
                  works: list[_Work]) -> None:
        """Run ``step`` on the works; if it raises (it then changed nothing), run ``alone`` on each work by itself, so
        that whatever one stream makes the monitor raise fails that stream only."""
        try:
            step(works)
            return
        except Exception as err:
            if len(works) == 1 and step is alone:
                self._fail_on(works[0].stream, err)
                return
            log.warning("a monitor step for %d streams failed (%s); stepping them one by one", len(works),
                        type(err).__name__)
        for work in works:
            try:
                alone([work])
            except Exception as err:
                self._fail_on(work.stream, err)

    def _may_overflow(self, work: _Work) -> bool:
        # Byte-level tokens never outnumber UTF-8 bytes, so the byte count bounds the text's new tokens (a
        # normalising tokenizer may still expand a little: that stream is then cut by the retry alone).
        guard = work.stream.guard
        unscored = _utf8_size(guard.unscored_text) + sum(_utf8_size(piece) for piece in work.pieces)
        return guard.state.length + unscored > self.monitor.max_length

    def _score_text(self, works: list[_Work]) -> None:
        """Feed (and finish) text streams in one batched step. Raises only while nothing has changed."""
        began = time.perf_counter()
        updates = feed_many([w.stream.guard for w in works], ["".join(w.pieces) for w in works])
        self._record("feed", began, len(works), sum(len(u.token_ids) for u in updates), works)
        finishing = [w for w, u in zip(works, updates) if w.finish and not u.stopped]
        finals = self._finish_text(finishing) if finishing else {}
        for work, update in zip(works, updates):
            try:
                self._emit_text(work.stream, update, finals.get(work.stream.id))
            except Exception as err:  # scoring is done; only this stream's event failed
                self._fail_on(work.stream, err)

    def _score_text_within_limit(self, works: list[_Work]) -> None:
        """One text stream: exactly as :meth:`_score_text` when its tokens fit; else as much of its new text as the
        monitor surely reads, then the stream ends truncated."""
        (work,) = works
        try:
            self._score_text(works)
            return
        except StreamLengthError:
            pass
        guard = work.stream.guard
        room = self.monitor.max_length - guard.state.length - _utf8_size(guard.unscored_text)
        text = "".join(work.pieces)
        # The longest prefix whose UTF-8 size is within the room (a character cut in two is left out whole).
        prefix = text.encode("utf-8")[:max(room, 0)].decode("utf-8", "ignore")
        update = None
        while prefix and update is None:
            try:
                update = feed_many([guard], [prefix])[0]
            except StreamLengthError:  # a normaliser expanded the text beyond its byte count: try less
                prefix = prefix[: len(prefix) // 2]
        self._emit_text(work.stream, update or GuardUpdate(), None if update and update.stopped else _TRUNCATED)

    def _finish_text(self, works: list[_Work]) -> dict[int, Any]:
        """Finish text streams together (one by one if that raises): per stream, its final update, or
        :data:`_TRUNCATED` when the held-back tail does not fit the monitor, or the exception that failed it."""
        guards = [w.stream.guard for w in works]
        began = time.perf_counter()
        try:
            finished = finish_many(guards)
        except StreamLengthError:
            if len(works) == 1:
                return {works[0].stream.id: _TRUNCATED}
        except Exception as err:
            if len(works) == 1:
                return {works[0].stream.id: err}
        else:
            self._record("finish", began, len(works), sum(len(u.token_ids) for u in finished), [])
            return {w.stream.id: u for w, u in zip(works, finished)}
        results: dict[int, Any] = {}
        for work in works:
            results.update(self._finish_text([work]))
        return results

    def _emit_text(self, stream: MonitoredStream, update: Any, final: Any) -> None:
        """Post a text stream's event: the feed's update, merged with its final update or its truncation."""
        event = self._text_event(stream, update)
        if isinstance(final, BaseException):
            self._post(stream, event)
            self._fail_on(stream, final)
            return
        if final is _TRUNCATED:
            stream.truncated = True
            stream.guard.close()
            event.finished = event.truncated = True
        elif final is not None:
            tail = self._text_event(stream, final)
            event.released += tail.released
            event.tokens += tail.tokens
            if event.category_probs is not None or tail.category_probs is not None:
                event.category_probs = (event.category_probs or []) + (tail.category_probs or [])
            event.annotations += tail.annotations
            event.stop = tail.stop
            event.finished = True
        self._post(stream, event)

    def _text_event(self, stream: MonitoredStream, update) -> StreamEvent:
        guard = stream.guard
        self._account(stream, update.scores, update.category_probs)
        # In hold-back mode the tokens' received texts are exactly the released text (the page colours it).
        tokens = [{"text": t, "score": s} for t, s in zip(update.raw_token_texts, update.scores)]
        event = StreamEvent(released=update.released, tokens=tokens, category_probs=update.category_probs,
                            annotations=list(update.annotations))
        if update.stop is not None:
            at = update.stop.event.index - (guard.state.n_response_tokens - len(update.token_ids))
            event.tokens = tokens[:at]
            if event.category_probs is not None:
                event.category_probs = event.category_probs[:at]
            event.stop = StopDetails(update.stop.event)
        return event

    def _account(self, stream: MonitoredStream, scores: Sequence[float],
                 category_probs: Sequence[Sequence[float]] | None = None) -> None:
        stream.tokens_scored += len(scores)
        if scores:
            at = max(range(len(scores)), key=scores.__getitem__)
            if stream.max_score is None or scores[at] > stream.max_score:
                stream.max_score = scores[at]
                if category_probs is not None:
                    stream.peak_category_probs = list(category_probs[at])

    def _score_ids(self, works: list[_Work]) -> None:
        """Push id streams in one batched step (a stream is cut at the monitor's maximum length). Raises only while
        nothing has changed."""
        id_lists, cut = [], []
        for work in works:
            ids = [t for piece in work.pieces for t in piece]
            room = max(0, self.monitor.max_length - work.stream.state.length)
            cut.append(len(ids) > room)
            id_lists.append(ids[:room])
        began = time.perf_counter()
        results = self.monitor.push_many([w.stream.state for w in works], id_lists)
        self._record("push", began, len(works), sum(len(ids) for ids in id_lists), works)
        for work, ids, result, truncated in zip(works, id_lists, results, cut):
            try:
                self._emit_ids(work, ids, result, truncated)
            except Exception as err:
                self._fail_on(work.stream, err)

    def _emit_ids(self, work: _Work, ids: list[int], result, truncated: bool) -> None:
        """Post an id stream's event: the text of its scored ids (up to a stop), its end or its truncation."""
        stream = work.stream
        texts = stream.detokenizer.add(ids)
        self._account(stream, result.scores, result.category_probs)
        tokens = [{"text": t, "score": s} for t, s in zip(texts, result.scores)]
        event = StreamEvent(released="".join(texts), tokens=tokens, category_probs=result.category_probs,
                            annotations=list(result.annotations))
        if result.stop is not None:
            at = result.stop.index - (stream.state.n_response_tokens - len(ids))
            event.tokens = tokens[:at]
            if event.category_probs is not None:
                event.category_probs = event.category_probs[:at]
            event.released = "".join(texts[:at])
            event.stop = StopDetails(result.stop)
        elif truncated:
            stream.truncated = True
            event.finished = event.truncated = True
        elif work.finish:
            tail = stream.detokenizer.flush()  # bytes of a character that never completed, as U+FFFD
            event.released += tail
            if tokens:
                tokens[-1]["text"] += tail
            event.finished = True
        if event.stop is not None or event.finished:
            self.monitor.close(stream.state)
        self._post(stream, event)

    def _fail_on(self, stream: MonitoredStream, err: BaseException) -> None:
        """End one stream after ``err``: a model failure follows ``on_error``; anything else fails closed."""
        if isinstance(err, StreamLengthError):  # beyond the monitor's length: cut, as in _score_text_within_limit
            stream.truncated = True
            self._release(stream)
            self._post(stream, StreamEvent(finished=True, truncated=True))
            return
        if isinstance(err, _MONITOR_FAULTS) and not isinstance(err, StreamingError):
            cause, message = "monitor", "the monitor failed on this stream"
        elif isinstance(err, (TypeError, ValueError, StreamingError)):
            cause, message = "input", "the monitor could not read this response"
        else:
            cause, message = "internal", "the gateway failed on this stream"
        log.error("stream %d failed in the monitor worker (%s)", stream.id, cause, exc_info=err)
        self._fail(stream, message, cause, may_open=cause == "monitor")

    def _fail(self, stream: MonitoredStream, message: str, cause: str, may_open: bool = False) -> None:
        """Free a stream and post its error event (``message`` reaches the client: the gateway's own words)."""
        with self._cond:
            stream._failed = True
            self._ready.pop(stream.id, None)
            stream._pending, stream._arrivals, stream._pending_size = [], [], 0
            stream._finish_requested = False
        self._release(stream)
        self._count(cause)
        self._post(stream, StreamEvent(error=message, unmonitored=may_open and self.on_error == "open"))


# Model failures (an accelerator error, out of memory): the only ones that may fail open.
_MONITOR_FAULTS = (RuntimeError, MemoryError)
_TRUNCATED = object()


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _settle(future: concurrent.futures.Future, *, result: Any = None, exception: BaseException | None = None) -> bool:
    """Set a future's outcome; False when its waiter cancelled it meanwhile (nobody reads it then)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
        return True
    except concurrent.futures.InvalidStateError:
        return False
