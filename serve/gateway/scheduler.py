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

Monitor failures: when a step raises, every stream in it fails (a stream that might exceed the monitor's maximum
length is stepped alone first, so it cannot take others down). ``on_error="close"`` (fail closed, the default)
ends a failed stream with an error and releases nothing unscored; ``"open"`` releases what it withheld and passes
the rest of the response through unmonitored, flagged as such.
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
from serve.monitor import StopEvent, StreamingMonitor, StreamState
from serve.text_guard import TextStreamGuard, feed_many, finish_many

log = logging.getLogger("serve.gateway")

TEXT, IDS = "text", "ids"
# Steps and latencies kept for --stats-file and the benchmark (oldest dropped first).
STATS_WINDOW = 1_000_000


class Overloaded(Exception):
    """All stream slots are taken."""


@dataclass
class StopDetails:
    """A stop, with the stop token's text (the event says where and why)."""

    event: StopEvent
    token_text: str


@dataclass
class StreamEvent:
    """What the worker tells a stream after a step.

    Attributes:
        released: text the client may see now.
        tokens: the scored tokens behind ``released``, ``{"text", "score"}`` each (extension for the page).
        stop: set when the monitor stopped the stream in this step.
        finished: the stream's input is complete and fully scored (after :meth:`MonitoredStream.finish`).
        error: the monitor failed on this stream (message).
        unmonitored: after an error under ``on_error="open"``: the rest passes through unscored.
    """

    released: str = ""
    tokens: list[dict[str, Any]] = field(default_factory=list)
    stop: StopDetails | None = None
    finished: bool = False
    error: str | None = None
    unmonitored: bool = False


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

    def __init__(self, scheduler: "MonitorScheduler", stream_id: int, kind: str, prompt: str) -> None:
        self.scheduler, self.id, self.kind, self.prompt = scheduler, stream_id, kind, prompt
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
        # Guarded by the scheduler's lock.
        self._pending: list[Any] = []
        self._arrivals: list[float] = []
        self._pending_size = 0
        self._finish_requested = False
        self._scored_chars = 0
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

    async def open(self, prompt: str, kind: str) -> MonitoredStream:
        """Open a stream: start the monitor on ``prompt`` (in the worker, between steps).

        Args:
            prompt: the prompt text the monitor reads.
            kind: ``text`` (text deltas through the text guard) or ``ids`` (token ids of the monitor's tokenizer).

        Raises:
            Overloaded: ``max_streams`` streams are live. Whatever ``monitor.start`` raises (a too-long prompt).
        """
        if kind not in (TEXT, IDS):
            raise ValueError(f"kind must be {TEXT!r} or {IDS!r}, got {kind!r}")
        self._loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            if self._live >= self.max_streams:
                raise Overloaded(f"{self._live} live streams, the maximum")
            self._live += 1
            stream = MonitoredStream(self, next(self._ids), kind, prompt)
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
                raise RuntimeError("the scheduler is stopped")
            self._jobs.append((job, future))
            self._cond.notify()
        return await asyncio.wrap_future(future)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after the work already queued (streams left open are freed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        """Every recorded step (start time, seconds, streams, tokens, kind) and monitor-added latency."""
        return {"steps": list(self.steps), "latencies_s": list(self.latencies)}

    # ------------------------------------------------------------------------------------------- event loop side

    def _enqueue(self, stream: MonitoredStream, piece: Any, size: int, finish: bool = False) -> None:
        with self._cond:
            if stream.closed:
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
        """Stopped or finished: the monitor takes no more input for it (the event loop closes it next)."""
        if stream.guard is not None:
            return stream.guard.finished or stream.guard.stop is not None
        return stream.state.closed or stream.state.stopped

    def _open(self, request: _OpenRequest) -> None:
        stream = request.stream
        try:
            if stream.kind == TEXT:
                stream.guard = TextStreamGuard(self.monitor, stream.prompt, hold_back=self.hold_back)
                stream.state = stream.guard.state
            else:
                stream.state = self.monitor.start(stream.prompt)
                stream.detokenizer = IncrementalDetokenizer(self.monitor.tokenizer)
        except Exception as err:  # a too-long prompt, an unusable tokenizer: the caller answers 4xx/5xx
            request.future.set_exception(err)
            return
        with self._cond:
            self._open_states[stream.id] = stream
        if stream.closed:  # closed (cancelled) while it was being opened
            self._release(stream)
        request.future.set_result(stream)

    def _release(self, stream: MonitoredStream) -> None:
        with self._cond:
            self._open_states.pop(stream.id, None)
        if stream.guard is not None and not stream.guard.finished:
            stream.guard.close()
        elif stream.state is not None and not stream.state.closed:
            self.monitor.close(stream.state)

    def _run_job(self, job: Callable[[StreamingMonitor], Any], future: concurrent.futures.Future) -> None:
        try:
            future.set_result(job(self.monitor))
        except Exception as err:
            future.set_exception(err)

    def _record(self, kind: str, began: float, streams: int, tokens: int, works: Sequence[_Work]) -> None:
        done = time.perf_counter()
        seconds = done - began
        self.steps.append({"t": began, "seconds": seconds, "streams": streams, "tokens": tokens, "kind": kind})
        latencies = [done - arrival for work in works for arrival in work.arrivals]
        self.latencies.extend(latencies)
        if self.observer is not None:
            self.observer.observe_step(seconds, streams, tokens)
            for latency in latencies:
                self.observer.observe_latency(latency)

    def _step(self, batch: list[_Work]) -> None:
        max_length = self.monitor.max_length
        text, ids = [w for w in batch if w.stream.kind == TEXT], [w for w in batch if w.stream.kind == IDS]
        # A stream that could exceed the monitor's maximum length steps alone: if it fails, it fails alone.
        # (Byte-level tokens never outnumber UTF-8 bytes, so the byte count bounds the text's new tokens.)
        risky = [w for w in text if w.stream.state.length + len(self._unscored_text(w).encode("utf-8"))
                 > max_length]
        safe = [w for w in text if w not in risky]
        if safe:
            self._step_text(safe)
        for work in risky:
            self._step_text([work])
        too_long = [w for w in ids if w.stream.state.length + sum(len(p) for p in w.pieces) > max_length]
        for work in too_long:
            self._fail(work.stream, f"the response exceeds the monitor's maximum length of {max_length} tokens "
                                    f"(prompt and response)")
        ids = [w for w in ids if w not in too_long]
        if ids:
            self._step_ids(ids)

    @staticmethod
    def _unscored_text(work: _Work) -> str:
        guard = work.stream.guard
        return guard.text[guard.retokenizer.committed_chars:] + "".join(work.pieces)

    def _step_text(self, works: list[_Work]) -> None:
        guards = [w.stream.guard for w in works]
        began = time.perf_counter()
        try:
            updates = feed_many(guards, ["".join(w.pieces) for w in works])
        except Exception as err:  # fail every stream of the step, as the policy says
            log.exception("monitor step failed for %d text streams", len(works))
            for work in works:
                self._fail(work.stream, f"monitor failure: {err}")
            return
        self._record("feed", began, len(works), sum(len(u.token_ids) for u in updates), works)
        finishing = [i for i, (w, u) in enumerate(zip(works, updates)) if w.finish and not u.stopped]
        finals = {}
        if finishing:
            began = time.perf_counter()
            try:
                finished = finish_many([works[i].stream.guard for i in finishing])
            except Exception as err:
                log.exception("monitor finish failed for %d text streams", len(finishing))
                for i in finishing:
                    self._fail(works[i].stream, f"monitor failure: {err}")
                finishing_failed = set(finishing)
                works = [w for i, w in enumerate(works) if i not in finishing_failed]
                updates = [u for i, u in enumerate(updates) if i not in finishing_failed]
            else:
                self._record("finish", began, len(finishing), sum(len(u.token_ids) for u in finished), [])
                finals = dict(zip(finishing, finished))
        for i, (work, update) in enumerate(zip(works, updates)):
            event = self._text_event(work.stream, update)
            final = finals.get(i)
            if final is not None:
                tail = self._text_event(work.stream, final)
                event.released += tail.released
                event.tokens += tail.tokens
                event.stop = tail.stop
                event.finished = True
            self._post(work.stream, event)

    def _text_event(self, stream: MonitoredStream, update) -> StreamEvent:
        guard = stream.guard
        start = stream._scored_chars
        end = len(guard.text) if guard.finished and update.stop is None else guard.retokenizer.committed_chars
        stream._scored_chars = max(start, end)
        texts = span_texts(self.monitor.tokenizer, guard.text[start:end], update.token_ids)
        self._account(stream, update.scores)
        tokens = [{"text": t, "score": s} for t, s in zip(texts, update.scores)]
        event = StreamEvent(released=update.released, tokens=tokens)
        if update.stop is not None:
            at = update.stop.event.index - (guard.state.n_response_tokens - len(update.token_ids))
            event.tokens = tokens[:at]
            event.stop = StopDetails(update.stop.event, update.stop.token_text)
        return event

    def _account(self, stream: MonitoredStream, scores: Sequence[float]) -> None:
        stream.tokens_scored += len(scores)
        if scores:
            peak = max(scores)
            stream.max_score = peak if stream.max_score is None else max(stream.max_score, peak)

    def _step_ids(self, works: list[_Work]) -> None:
        id_lists = [[t for piece in w.pieces for t in piece] for w in works]
        began = time.perf_counter()
        try:
            results = self.monitor.push_many([w.stream.state for w in works], id_lists)
        except Exception as err:
            log.exception("monitor step failed for %d token streams", len(works))
            for work in works:
                self._fail(work.stream, f"monitor failure: {err}")
            return
        self._record("push", began, len(works), sum(len(ids) for ids in id_lists), works)
        for work, ids, result in zip(works, id_lists, results):
            stream = work.stream
            texts = stream.detokenizer.add(ids)
            self._account(stream, result.scores)
            tokens = [{"text": t, "score": s} for t, s in zip(texts, result.scores)]
            event = StreamEvent(released="".join(texts), tokens=tokens)
            if result.stop is not None:
                at = result.stop.index - (stream.state.n_response_tokens - len(ids))
                event.tokens = tokens[:at]
                event.released = "".join(texts[:at])
                token_text = self.monitor.tokenizer.decode([result.stop.token_id], skip_special_tokens=True)
                event.stop = StopDetails(result.stop, token_text)
            elif work.finish:
                tail = stream.detokenizer.flush()
                event.released += tail
                event.finished = True
            if event.stop is not None or event.finished:
                self.monitor.close(stream.state)
            self._post(stream, event)

    def _fail(self, stream: MonitoredStream, message: str) -> None:
        self._release(stream)
        event = StreamEvent(error=message, unmonitored=self.on_error == "open")
        self._post(stream, event)
