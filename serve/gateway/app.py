"""The gateway's HTTP application (FastAPI): OpenAI-compatible routes around the monitor scheduler.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming SSE or not), ``POST /v1/moderations``,
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus) and ``GET /`` (the chat page). Build it with
:func:`create_app`; ``python -m serve.gateway`` (``bash scripts/run-serve.sh``) loads the models and serves it.

One request's life (:class:`Session`): the body is read up to ``max_request_bytes`` (413 beyond, before it is read
whole); parsing, validation and every tokenisation run in a worker thread (:meth:`Gateway.prepare`), never on the
event loop, so that a large prompt cannot pause other streams or ``/health``; the prompt the monitor reads is taken
from the request (chat: the last user message by default, see :func:`~serve.gateway.protocol.chat_prompt_text`); a
stream slot is taken (429 when none is free); the response source is opened (proxy: the upstream request, whose
error status is answered with a message of the gateway's; local: a generation thread); a pump task moves the
source's pieces into the scheduler while the response reads the scheduler's events and sends only released, scored
text. On a stop the source is cancelled at once and the final chunk says ``finish_reason: "content_filter"`` with
the ``moderation`` object (with a category head: the category named at the stop, OpenAI's category keys, and the
firings the category policy let through; ``serve/category_policy.py``); on a source failure the client gets an
error event and nothing that was not scored; a stream without scored progress for ``stream_idle_timeout`` seconds,
or longer than ``max_stream_seconds`` in all, ends with an error event (keepalives do not hold a slot forever);
whatever way the request ends (client gone, error, shutdown), :meth:`Session.close` cancels the source and frees
the stream.

Nothing the upstream or the monitor's internals wrote reaches a client outside ``content``: error messages are the
gateway's own (details go to the log, where URLs are shown without credentials, path or query), ``/health`` shows
the upstream as ``scheme://host:port`` and the checkpoint by its folder name only. See docs/SECURITY.md.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.category_policy import (ANNOTATION_FORMATS, HARMFUL, azure_filter_results, category_scores,
                                   wire_categories, wire_keys)
from serve.gateway.metrics import GatewayMetrics
from serve.gateway.protocol import (ChatCompletionRequest, CompletionRequest, GatewayError, ModerationRequest,
                                    ResponseWriter, chat_prompt_text, error_body, new_id, parse_body, sse,
                                    validate_request)
from serve.gateway.scheduler import (IDS, TEXT, MonitorScheduler, MonitoredStream, Overloaded, SchedulerUnavailable,
                                     StreamEvent, span_texts)
from serve.gateway.sources import GenerationParams, LocalGenerator, SourceError, Upstream, redact_url
from serve.gateway.detokenize import IncrementalDetokenizer
from serve.monitor import StreamingMonitor
from serve.operating_point import served_point

log = logging.getLogger("serve.gateway")
OPEN_PATHS = ("/health", "/", "/favicon.ico")
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# HTTP status of each error type of a stream's error event (for a non-streaming request).
ERROR_STATUS = {"upstream_timeout": 504, "stream_timeout": 504, "server_shutdown": 503, "monitor_error": 500,
                "server_error": 500, "upstream_error": 502}
# Annotations listed in a final `moderation` object at most (all are counted in `annotation_counts` and /metrics): a
# long response may re-fire the rule at every later flagged token.
MAX_LISTED_ANNOTATIONS = 32


def _rule_parameter(monitor: StreamingMonitor) -> int | None:
    return getattr(monitor.rule, "k", getattr(monitor.rule, "n", None))


class Gateway:
    """Everything the routes share: the monitor, its scheduler, the response source, metrics, settings.

    Args:
        monitor: the streaming monitor (with its tokenizer).
        upstream: proxy mode: the upstream server. generator: local mode: the generator. Exactly one.
        model_name: the model name reported to clients (default: the generator's or the upstream's).
        chat_prompt: ``last-user`` or ``conversation`` (see :func:`chat_prompt_text`).
        max_tokens: local mode: response tokens when a request sets none.
        api_key: required Bearer key (None: no key).
        retry_after: seconds of the 429's Retry-After.
        scheduler_options: passed to :class:`MonitorScheduler` (max_streams, max_batch_streams, max_pending,
            hold_back, on_error).
        info: extra facts for ``/health`` (``model_path``: the checkpoint, ``generator``); an open route, so a
            path is shown by its last component and a URL as ``scheme://host:port``.
        max_request_bytes: largest request body (413 beyond).
        stream_idle_timeout: seconds a stream may go without scored progress before it ends with an error.
        max_stream_seconds: seconds a stream may last in all.
        annotations: ``none`` or ``azure`` (Azure-style ``content_filter_results`` and ``content_filter_offsets``
            on each choice of a streamed chunk, and ``content_filter_results`` on a whole response's choice).
    """

    def __init__(self, monitor: StreamingMonitor, *, upstream: Upstream | None = None,
                 generator: LocalGenerator | None = None, model_name: str | None = None,
                 chat_prompt: str = "last-user", max_tokens: int = 256, api_key: str | None = None,
                 retry_after: int = 1, scheduler_options: dict[str, Any] | None = None,
                 info: dict[str, Any] | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 stream_idle_timeout: float = 60.0, max_stream_seconds: float = 600.0,
                 annotations: str = "none") -> None:
        if (upstream is None) == (generator is None):
            raise ValueError("a gateway needs exactly one response source: an upstream or a local generator")
        if annotations not in ANNOTATION_FORMATS:
            raise ValueError(f"annotations must be one of {', '.join(ANNOTATION_FORMATS)}, got {annotations!r}")
        self.annotations = annotations
        if monitor.tokenizer is None:
            raise ValueError("the monitor has no tokenizer (its checkpoint folder holds none); the gateway needs it")
        self.monitor, self.upstream, self.generator = monitor, upstream, generator
        self.mode = "proxy" if upstream is not None else "local"
        self.model_name = model_name or (generator.name if generator is not None else "upstream")
        self.chat_prompt, self.max_tokens = chat_prompt, max_tokens
        self.api_key, self.retry_after = api_key, retry_after
        self.info = {key: _public(value) for key, value in (info or {}).items()}
        if upstream is not None:
            self.info.setdefault("upstream", upstream.display_url)
        self.monitor_name = self.info.get("model_path", "monitor")
        self.max_request_bytes = max_request_bytes
        self.stream_idle_timeout, self.max_stream_seconds = stream_idle_timeout, max_stream_seconds
        self.metrics = GatewayMetrics()
        self.scheduler = MonitorScheduler(monitor, observer=self.metrics, **(scheduler_options or {}))
        # Local mode monitors the generated ids as they are when the generator speaks the monitor's tokenizer.
        self.ids_path = generator is not None and generator.tokenizer.get_vocab() == monitor.tokenizer.get_vocab()
        self.sessions: set[Session] = set()
        self.draining = False

    # ------------------------------------------------------------------------------------------- lifecycle

    async def begin_shutdown(self, grace: float) -> None:
        """Refuse new requests; after ``grace`` seconds end every live stream with a ``server_shutdown`` error."""
        self.draining = True
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.interrupt("the server is shutting down; retry the request", "server_shutdown")

    async def aclose(self) -> None:
        """Free everything (after the server stopped serving)."""
        for session in list(self.sessions):
            await session.close("shutdown")
        self.scheduler.stop()
        if self.upstream is not None:
            await self.upstream.aclose()

    # ------------------------------------------------------------------------------------------- helpers

    def prompt_ids(self, prompt: str, param: str = "messages") -> list[int]:
        """The monitor's prompt ids (blocking: call it off the event loop).

        Raises:
            GatewayError: 400 when the prompt leaves the monitor no room for a response.
        """
        ids = self.monitor.encode_prompt(prompt)
        if len(ids) >= self.monitor.max_length:
            raise GatewayError(400, f"the prompt is {len(ids)} tokens for the monitor, which reads at most "
                                    f"{self.monitor.max_length} tokens (prompt and response); shorten it",
                               param=param, code="context_length_exceeded")
        return ids

    def prepare(self, kind: str, raw: bytes) -> "Prepared":
        """Everything a completion request needs before a stream opens: the parsed body, the monitor's prompt ids,
        the local generator's input and budget. Runs in a worker thread: parsing and tokenising a large body take
        seconds that must not pause the event loop.

        Raises:
            GatewayError: 400 for every malformed or over-long request.
        """
        payload = parse_body(raw)
        req = validate_request(ChatCompletionRequest if kind == "chat" else CompletionRequest, payload)
        prompt = chat_prompt_text(req.messages, self.chat_prompt) if kind == "chat" else req.prompt
        prompt_ids = self.prompt_ids(prompt, "messages" if kind == "chat" else "prompt")
        budget, prompt_tokens, input_ids = req.token_budget(), None, None
        if self.mode == "local":
            generator = self.generator
            messages = [{"role": m.role, "content": m.text()} for m in req.messages] if kind == "chat" else None
            try:
                input_ids = generator.input_ids(kind, messages, prompt if kind == "text" else None)
            except TemplateError as err:  # the template's own check of the conversation (roles, order)
                raise GatewayError(400, f"the generator's chat template rejects these messages: {err}",
                                   param="messages", code="invalid_value") from None
            prompt_tokens = len(input_ids)
            room = self.monitor.max_length - len(prompt_ids)
            if generator.max_length is not None:
                room = min(room, generator.max_length - prompt_tokens)
            if room < 1:
                raise GatewayError(400, f"the prompt is {prompt_tokens} tokens for the generator, which reads at "
                                        f"most {generator.max_length}; shorten it", param="messages",
                                   code="context_length_exceeded")
            # The response is cut at the room left in the monitor and the generator (finish_reason "length").
            budget = min(budget or self.max_tokens, room)
        return Prepared(req, payload, prompt_ids, budget, prompt_tokens, input_ids)

    def moderation(self, stream: MonitoredStream, event: StreamEvent | None,
                   annotations: "AnnotationLog | None" = None) -> dict[str, Any]:
        """The ``moderation`` object of a final chunk or response.

        With a category head it also carries ``category`` (named at the stop token, else None), ``categories``,
        ``category_scores`` and ``category_applied_input_types`` (OpenAI's keys; at the stop token, else at the
        token with the highest harmful score), ``annotations`` (the first :data:`MAX_LISTED_ANNOTATIONS` firings the
        category policy let through) and ``annotation_counts`` (all of them, by category). Without a head the
        object is exactly what it was before the head existed.
        """
        monitor = self.monitor
        body: dict[str, Any] = {"flagged": False, "stopped": False, "rule": monitor.rule.name,
                                "theta": monitor.theta, "k": _rule_parameter(monitor), "scorer": monitor.scorer,
                                "tokens_scored": stream.tokens_scored, "max_score": stream.max_score,
                                "chars_released": stream.released_chars}
        if event is not None and event.stop is not None:
            # The stop token's id, never its text: the flagged text is what the stop withholds.
            stop = event.stop.event
            body.update(flagged=True, stopped=True, response_token_index=stop.index, token_id=stop.token_id,
                        score=stop.score, count=stop.count, chars_withheld=stream.chars_withheld())
        if event is not None and event.truncated:
            body.update(truncated=True, chars_withheld=stream.chars_withheld())
        if stream.unmonitored:
            body["unmonitored"] = True
        # OpenAI's own (newer) `moderation` field has {input, output} in its moderation-results shape; carrying
        # both keeps strict clients that validate it working. Only the output is moderated here.
        score = body.get("score", stream.max_score) or 0.0
        model = f"scm:{self.monitor_name}"
        labels = monitor.category_labels
        stop = event.stop.event if event is not None and event.stop is not None else None
        scores, named = self.reported_categories(stream, stop)
        wire = wire_categories(labels, scores, named, body["flagged"], score)
        if labels is not None:
            log = annotations or AnnotationLog()
            body.update(category=named, **wire, annotations=log.listed(), annotation_counts=dict(log.counts))
        body["input"] = {"type": "error", "code": "not_moderated",
                         "message": "the gateway monitors the response, not the request"}
        body["output"] = {"type": "moderation_results", "model": model, "results": [{
            "type": "moderation_result", "model": model, "flagged": body["flagged"], **wire}]}
        return body

    def reported_categories(self, stream: MonitoredStream, stop: Any) -> tuple[dict[str, float] | None, str | None]:
        """A stream's category scores and named category: at the stop token (named), else at its highest-scoring
        token (none named: nothing was flagged); ``(None, None)`` without a category head or a scored token."""
        labels = self.monitor.category_labels
        if labels is None:
            return None, None
        if stop is not None and stop.category_scores is not None:
            return stop.category_scores, stop.category
        if stream.peak_category_probs is not None and stream.max_score is not None:
            return category_scores(stream.max_score, stream.peak_category_probs, labels), None
        return None, None

    def azure_keys(self) -> list[str]:
        """The keys of ``content_filter_results``: the wire's categories, or ``harmful`` without a head."""
        labels = self.monitor.category_labels
        return wire_keys(labels) if labels is not None else [HARMFUL]

    def azure_chunk_results(self, tokens: list[dict[str, Any]], probs: list[list[float]] | None) -> dict[str, Any]:
        """``content_filter_results`` of released tokens: each key's severity from its highest category score over
        them (``harmful``: the harmful score, without a head); nothing released was filtered."""
        labels = self.monitor.category_labels
        peaks: dict[str, float] = {}
        if labels is None:
            peaks[HARMFUL] = max((t["score"] for t in tokens), default=0.0)
        elif probs is not None:
            for token, distribution in zip(tokens, probs):
                for label, p in zip(labels, distribution):
                    peaks[label] = max(peaks.get(label, 0.0), token["score"] * p)
        return azure_filter_results(self.azure_keys(), peaks, None)

    def azure_final_results(self, stream: MonitoredStream, stop: Any) -> dict[str, Any]:
        """``content_filter_results`` of a final chunk: at the stop token (its category ``filtered``), else at the
        highest-scoring token (nothing filtered)."""
        if self.monitor.category_labels is None:
            score = stop.score if stop is not None else (stream.max_score or 0.0)
            return azure_filter_results([HARMFUL], {HARMFUL: score}, HARMFUL if stop is not None else None)
        scores, named = self.reported_categories(stream, stop)
        return azure_filter_results(self.azure_keys(), scores or {}, named)

    @property
    def healthy(self) -> bool:
        """Whether the monitor's worker runs (a gateway without it can only fail requests)."""
        return self.scheduler.alive

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports (an open route: no secret, no path; see ``info``)."""
        status = "unhealthy" if not self.healthy else "draining" if self.draining else "ok"
        monitor = self.monitor
        settings = {**monitor_settings(monitor), "device": str(monitor.device)}
        if monitor.category_labels is not None:  # the head's categories and the policy over them
            settings["categories"] = {"labels": list(monitor.category_labels), **monitor.category_policy.public()}
        return {"status": status, "mode": self.mode, "model": self.model_name,
                "live_streams": self.scheduler.live_streams, "max_streams": self.scheduler.max_streams,
                "hold_back": self.scheduler.hold_back, "on_monitor_error": self.scheduler.on_error,
                "chat_prompt": self.chat_prompt, "monitor": settings, "annotations": self.annotations,
                "operating_point": served_point(monitor),
                "monitors_ids_directly": self.ids_path, **self.info}


def _public(value: Any) -> Any:
    """A fact fit for an open route: a URL as ``scheme://host:port``, a path by its last component."""
    if not isinstance(value, str):
        return value
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
        return redact_url(value)
    if "/" in value or "\\" in value:
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1] or "?"
    return value


class AnnotationLog:
    """The firings a stream's category policy let through: the first :data:`MAX_LISTED_ANNOTATIONS` of them, and a
    count of all by category."""

    def __init__(self) -> None:
        self.kept: list[Any] = []
        self.counts: dict[str, int] = {}

    def add(self, annotations: list[Any]) -> None:
        for annotation in annotations:
            if len(self.kept) < MAX_LISTED_ANNOTATIONS:
                self.kept.append(annotation)
            self.counts[annotation.category] = self.counts.get(annotation.category, 0) + 1

    def listed(self) -> list[dict[str, Any]]:
        return [annotation.public() for annotation in self.kept]


@dataclass
class Prepared:
    """A completion request, parsed and tokenised (:meth:`Gateway.prepare`)."""

    req: Any
    payload: dict[str, Any]
    prompt_ids: list[int]
    budget: int | None
    prompt_tokens: int | None
    input_ids: list[int] | None


def monitor_settings(monitor: StreamingMonitor) -> dict[str, Any]:
    """theta, rule, k and scorer of a monitor."""
    return {"theta": monitor.theta, "rule": monitor.rule.name, "k": _rule_parameter(monitor),
            "scorer": monitor.scorer}


class Session:
    """One completion request being served (see the module docstring)."""

    def __init__(self, gateway: Gateway, kind: str, stream: MonitoredStream, source: Any, writer: ResponseWriter,
                 budget: int | None, prompt_tokens: int | None, route: str) -> None:
        self.gateway, self.kind, self.stream, self.source, self.writer = gateway, kind, stream, source, writer
        self.budget, self.prompt_tokens, self.route = budget, prompt_tokens, route
        self.began = time.monotonic()
        self.outcome: str | None = None
        self.stop_event: StreamEvent | None = None
        self.completion_tokens = 0
        self.error_type: str | None = None
        self.include_usage = False
        self.annotations = AnnotationLog()
        # Characters of the response released, and covered by scored tokens, so far (Azure's offsets).
        self.offset = self.checked = 0
        self._closed = False
        self._pump = asyncio.create_task(self._run_pump())
        gateway.sessions.add(self)

    async def _run_pump(self) -> None:
        stream = self.stream
        # Local mode with a different tokenizer: generated ids -> text for the text guard.
        detokenizer = (IncrementalDetokenizer(self.gateway.generator.tokenizer)
                       if self.gateway.mode == "local" and stream.kind == TEXT else None)
        try:
            async for piece in self.source:
                if detokenizer is not None:
                    piece = "".join(detokenizer.add(piece))
                stream.submit(piece)
                await stream.wait_room()
            if detokenizer is not None:
                stream.submit(detokenizer.flush())
            stream.finish()
        except SourceError as err:
            self.interrupt(str(err), err.type)
        except Exception:  # an unexpected source failure must still end the client's stream
            log.exception("response source failed")
            self.interrupt("the response source failed", "upstream_error" if self.gateway.mode == "proxy" else
                           "server_error")

    def interrupt(self, message: str, type: str) -> None:
        """End the client's stream with an error event (source failure, shutdown); nothing more is released.

        ``message`` reaches the client: it must be the gateway's own text, never an upstream's.
        """
        if not self.stream.closed and self.error_type is None:
            self.error_type = type
            self.stream.interrupt(message)

    async def _next_event(self, last_progress: float) -> StreamEvent:
        """The stream's next event, or a timeout error event once the stream went ``stream_idle_timeout`` seconds
        without scored progress or lasted ``max_stream_seconds``. Only events with scored or released text, a
        stop, an end or an error count as progress: an upstream that sends keepalive comments, or text that
        never completes a token, cannot hold a slot."""
        gateway = self.gateway
        idle_deadline = last_progress + gateway.stream_idle_timeout
        total_deadline = self.began + gateway.max_stream_seconds
        timeout = max(0.0, min(idle_deadline, total_deadline) - time.monotonic())
        try:
            return await asyncio.wait_for(self.stream.next_event(), timeout)
        except asyncio.TimeoutError:
            pass
        if time.monotonic() >= total_deadline:
            cause, message = "time_limit", (f"the response took longer than the gateway's limit of "
                                            f"{gateway.max_stream_seconds:g} s")
        else:
            cause, message = "idle_timeout", (f"no scored text for {gateway.stream_idle_timeout:g} s (the response "
                                              f"source sent nothing the monitor could score)")
        gateway.metrics.observe_failure(cause)
        self.error_type = self.error_type or "stream_timeout"
        return StreamEvent(error=message)

    def _note_annotations(self, annotations: list[Any]) -> None:
        self.annotations.add(annotations)
        for annotation in annotations:
            self.gateway.metrics.category_annotations.labels(annotation.category, annotation.reason).inc()

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """``("content", text, tokens, event)`` for released text, then one ``("final", finish_reason, moderation,
        event)`` or ``("error", GatewayError)``."""
        stream = self.stream
        last_progress = time.monotonic()
        while True:
            event = await self._next_event(last_progress)
            if event.released or event.tokens:
                last_progress = time.monotonic()
            if event.error is not None and not event.unmonitored:
                type = self.error_type or "monitor_error"
                self.outcome = "shutdown" if type == "server_shutdown" else "error"
                if type == "monitor_error":
                    self.gateway.metrics.monitor_errors.inc()
                await self._cancel_source()
                message = event.error
                if type == "monitor_error":
                    message = f"{message}; the response was withheld (the gateway fails closed)"
                yield "error", GatewayError(ERROR_STATUS.get(type, 502), message, type=type, code=type)
                return
            if event.error is not None:  # on_monitor_error=open: the rest passes through unmonitored
                self.gateway.metrics.monitor_errors.inc()
                log.warning(json.dumps({"event": "monitor_error_fail_open", "stream": stream.id,
                                        "error": event.error}))
            if event.annotations:
                self._note_annotations(event.annotations)
            if event.released or event.tokens:
                self.completion_tokens += len(event.tokens)
                yield "content", event.released, event.tokens, event
            if event.stop is not None:
                self.stop_event = event
                await self._cancel_source()
                self.outcome = "stopped"
                moderation = self.gateway.moderation(stream, event, self.annotations)
                self.gateway.metrics.stops.inc()
                if event.stop.event.category is not None:
                    self.gateway.metrics.category_stops.labels(event.stop.event.category).inc()
                self.gateway.metrics.chars_withheld.inc(moderation["chars_withheld"])
                generated = getattr(self.source, "generated", None)
                if self.budget is not None and generated is not None:
                    self.gateway.metrics.tokens_saved.inc(max(0, self.budget - generated))
                yield "final", "content_filter", moderation, event
                return
            if event.truncated:
                # The monitor read all it can: the rest of the response is withheld and its source cancelled.
                await self._cancel_source()
                self.outcome = "truncated"
                self.gateway.metrics.truncated.inc()
                yield "final", "length", self.gateway.moderation(stream, event, self.annotations), event
                return
            if event.finished:
                self.outcome = "finished"
                await self._pump
                finish = getattr(self.source, "finish_reason", None) or "stop"
                yield "final", finish, self.gateway.moderation(stream, None, self.annotations), None
                return

    def usage(self) -> dict[str, int] | None:
        """Token usage: local mode counts the generator's tokens; proxy mode relays the upstream's, validated (three
        integers, see :func:`~serve.gateway.upstream_wire.clean_usage`), if it sent one."""
        if self.gateway.mode == "local":
            generated = getattr(self.source, "generated", 0)
            return {"prompt_tokens": self.prompt_tokens or 0, "completion_tokens": generated,
                    "total_tokens": (self.prompt_tokens or 0) + generated}
        return getattr(self.source, "usage", None)

    async def _cancel_source(self) -> None:
        if not self._pump.done():
            self._pump.cancel()
            try:
                await self._pump
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self.source.aclose()
        except Exception:  # closing a broken connection may fail; it is closed either way
            pass

    async def close(self, outcome: str | None = None) -> None:
        """Cancel the source, free the stream, count and log the request (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.outcome is None:
            self.outcome = outcome or "disconnected"
        with anyio.CancelScope(shield=True):
            await self._cancel_source()
        self.gateway.scheduler.close(self.stream)
        self.gateway.sessions.discard(self)
        metrics = self.gateway.metrics
        metrics.requests.labels(self.route, self.outcome).inc()
        record = {"event": "request", "id": self.writer.id, "route": self.route, "mode": self.gateway.mode,
                  "outcome": self.outcome, "seconds": round(time.monotonic() - self.began, 3),
                  "tokens_scored": self.stream.tokens_scored, "chars_released": self.stream.released_chars}
        if self.stop_event is not None:
            stop = self.stop_event.stop.event
            record.update(stop_index=stop.index, stop_score=round(stop.score, 4), rule=stop.rule)
            if stop.category is not None:
                record["stop_category"] = stop.category
        if self.annotations.counts:
            record["annotations"] = dict(self.annotations.counts)
        log.info(json.dumps(record))

    async def sse(self) -> AsyncIterator[bytes]:
        """The SSE body of a streaming response."""
        if self.kind == "chat":
            yield sse(self.writer.role_chunk())
        async for item in self.events():
            if item[0] == "content":
                azure = self._azure_content(item[1], item[2], item[3])
                yield sse(self.writer.content_chunk(item[1], item[2], azure))
            elif item[0] == "final":
                yield sse(self.writer.final_chunk(item[1], item[2], self._azure_final(item[3])))
                if self.include_usage:
                    yield sse(self.writer.usage_chunk(self.usage()))
                yield sse("[DONE]")
            else:
                yield sse(item[1].body())
        await self.close()

    def _azure_content(self, text: str, tokens: list[dict[str, Any]], event: StreamEvent) -> dict[str, Any] | None:
        """Azure's ``content_filter_results`` and ``content_filter_offsets`` of a content chunk (``--annotations
        azure``), else None. Offsets are characters of the released text: the chunk's start and end, and how far
        scored tokens cover the response (the end, in hold-back mode)."""
        start = self.offset
        self.offset += len(text)
        self.checked += sum(len(token["text"]) for token in tokens)
        if self.gateway.annotations != "azure":
            return None
        return {"content_filter_results": self.gateway.azure_chunk_results(tokens, event.category_probs),
                "content_filter_offsets": {"start_offset": start, "end_offset": self.offset,
                                           "check_offset": self.checked}}

    def _azure_final(self, event: StreamEvent | None) -> dict[str, Any] | None:
        """Azure's fields of the final chunk: at the stop (its category ``filtered``) or the highest score."""
        if self.gateway.annotations != "azure":
            return None
        stop = event.stop.event if event is not None and event.stop is not None else None
        return {"content_filter_results": self.gateway.azure_final_results(self.stream, stop),
                "content_filter_offsets": {"start_offset": self.offset, "end_offset": self.offset,
                                           "check_offset": self.checked}}

    async def collect(self) -> dict[str, Any]:
        """The non-streaming response body.

        Raises:
            GatewayError: the source or the monitor failed (nothing is returned).
        """
        parts: list[str] = []
        async for item in self.events():
            if item[0] == "content":
                parts.append(item[1])
            elif item[0] == "final":
                await self.close()
                azure = self._azure_final(item[3])
                return self.writer.response("".join(parts), item[1], item[2], self.usage(),
                                            azure and {"content_filter_results": azure["content_filter_results"]})
            else:
                await self.close()
                raise item[1]
        raise GatewayError(500, "the response ended without a final event", type="server_error")


class SessionResponse(StreamingResponse):
    """An SSE response that watches for the client going away and always closes its session.

    Starlette's StreamingResponse notices a disconnect only on some ASGI versions, and leaves the body generator's
    clean-up to the garbage collector when it is cancelled while sending; here the session is closed (source
    cancelled, stream freed) in every case, at once.
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session.sse(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.session = session

    async def __call__(self, scope, receive, send) -> None:
        body = self.body_iterator

        async def send_stream() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            async with anyio.create_task_group() as group:
                async def run() -> None:
                    try:
                        await send_stream()
                    except OSError:  # the client went away while we were sending
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(run)
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await body.aclose()
                await self.session.close("disconnected")


# --------------------------------------------------------------------------------------------------- routes

def _error_response(err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes: from its
    Content-Length before any of it is read, else while it streams in (chunked), never holding more than
    ``limit`` bytes.

    Raises:
        GatewayError: 413 (too large) or 400 (a Content-Length that is not a number).
    """
    too_large = GatewayError(413, f"the request body is larger than the gateway's limit of {limit} bytes; send a "
                                  f"smaller request", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise GatewayError(400, "the Content-Length header is not a number", code="invalid_request")
        if int(declared) > limit:
            raise too_large
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        body.append(chunk)
    return b"".join(body)


def _unavailable() -> GatewayError:
    return GatewayError(503, "the monitor is not running; the gateway cannot serve responses (see /health)",
                        type="server_error", code="monitor_unavailable")


async def _start_session(gateway: Gateway, request: Request, kind: str) -> Response:
    raw = await read_body(request, gateway.max_request_bytes)
    if gateway.draining:
        raise GatewayError(503, "the server is shutting down; retry the request", type="server_shutdown",
                           code="server_shutdown")
    if not gateway.healthy:
        raise _unavailable()
    prepared = await anyio.to_thread.run_sync(gateway.prepare, kind, raw)
    req = prepared.req
    route = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    stream_kind = IDS if gateway.ids_path else TEXT
    try:
        stream = await gateway.scheduler.open(None, stream_kind, prompt_ids=prepared.prompt_ids)
    except Overloaded:
        gateway.metrics.rejected.inc()
        raise GatewayError(429, f"all {gateway.scheduler.max_streams} stream slots are busy; retry after "
                                f"{gateway.retry_after} s", type="rate_limit_error", code="too_many_streams",
                           headers={"Retry-After": str(gateway.retry_after)}) from None
    except SchedulerUnavailable:
        raise _unavailable() from None
    try:
        if gateway.mode == "proxy":
            source = await gateway.upstream.open(kind, prepared.payload)
        else:
            stop = [req.stop] if isinstance(req.stop, str) else req.stop
            source = gateway.generator.start(prepared.input_ids,
                                             GenerationParams(prepared.budget, req.temperature, req.top_p, stop))
    except BaseException:
        gateway.scheduler.close(stream)
        raise
    writer = ResponseWriter(kind, req.model or gateway.model_name)
    session = Session(gateway, kind, stream, source, writer, prepared.budget, prepared.prompt_tokens, route)
    if req.stream:
        session.include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return SessionResponse(session)
    return await _collect_watching(request, session)


async def _collect_watching(request: Request, session: Session) -> Response:
    """A non-streaming response, cancelled (source and stream freed) when the client goes away meanwhile."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collect = asyncio.create_task(session.collect())
    watch = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
            # Wait for the cancellation to land: reading a task's result before that raises InvalidStateError.
            await asyncio.gather(collect, return_exceptions=True)
            await session.close("disconnected")
    if collect.cancelled():
        return Response(status_code=499)
    try:
        return JSONResponse(collect.result())
    except GatewayError as err:
        return _error_response(err)


async def _moderate(gateway: Gateway, request: Request) -> dict[str, Any]:
    raw = await read_body(request, gateway.max_request_bytes)
    if not gateway.healthy:
        raise _unavailable()
    tokenizer = gateway.monitor.tokenizer

    def prepare() -> tuple[ModerationRequest, list[str], list[int], list[list[int]]]:
        req = validate_request(ModerationRequest, parse_body(raw))
        texts = [req.input] if isinstance(req.input, str) else req.input
        if len(texts) > gateway.scheduler.max_streams:
            raise GatewayError(400, f"input holds {len(texts)} texts; send at most {gateway.scheduler.max_streams} "
                                    f"per request", param="input", code="too_many_inputs")
        prompt_ids = gateway.prompt_ids(req.prompt, "prompt")
        id_lists = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        for number, ids in enumerate(id_lists):
            if len(prompt_ids) + len(ids) > gateway.monitor.max_length:
                raise GatewayError(400, f"input {number} is {len(ids)} tokens; with the prompt the monitor reads at "
                                        f"most {gateway.monitor.max_length}", param="input",
                                   code="context_length_exceeded")
        return req, texts, prompt_ids, id_lists

    req, texts, prompt_ids, id_lists = await anyio.to_thread.run_sync(prepare)

    def score(monitor: StreamingMonitor) -> list[Any]:
        states = monitor.start_many(prompt_ids=[prompt_ids] * len(texts))
        try:
            return monitor.push_many(states, id_lists)
        finally:
            for state in states:
                monitor.close(state)

    try:
        results = await gateway.scheduler.run_job(score)
    except SchedulerUnavailable:
        raise _unavailable() from None

    labels = gateway.monitor.category_labels

    def describe() -> list[dict[str, Any]]:
        out = []
        for text, ids, result in zip(texts, id_lists, results):
            peak = max(result.scores) if result.scores else 0.0
            item: dict[str, Any] = {"flagged": result.stop is not None,
                                    "categories": {"harmful": result.stop is not None},
                                    "category_scores": {"harmful": peak},
                                    "scm": {**monitor_settings(gateway.monitor), "tokens_scored": len(ids)}}
            if result.stop is not None:
                # The client's own text: its stop token may be named.
                start = tokenizer.decode(ids[:result.stop.index])
                item["scm"].update(response_token_index=result.stop.index, score=result.stop.score,
                                   count=result.stop.count, token=tokenizer.decode([result.stop.token_id]),
                                   char_start=len(start))
            if labels is not None:
                # OpenAI's keys beside `harmful`: at the stop token when the rule stops the text, else at the token
                # with the highest harmful score (the first of equals); True only for the category named at a stop.
                scores, named, position = None, None, None
                if result.stop is not None:
                    scores, named, position = result.stop.category_scores, result.stop.category, result.stop.index
                elif result.scores:
                    position = max(range(len(result.scores)), key=result.scores.__getitem__)
                    scores = category_scores(result.scores[position], result.category_probs[position], labels)
                scm = item.pop("scm")
                item.update(wire_categories(labels, scores, named, result.stop is not None, peak), scm=scm)
                scm.update(category=named, category_token_index=position,
                           annotations=[annotation.public() for annotation in result.annotations])
            if req.return_token_scores:
                item["scm"]["tokens"] = [{"text": t, "score": s}
                                         for t, s in zip(span_texts(tokenizer, text, ids), result.scores)]
            out.append(item)
        return out

    out = await anyio.to_thread.run_sync(describe)
    return {"id": new_id("modr"), "model": req.model or f"scm-{gateway.model_name}", "results": out}


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every path except :data:`OPEN_PATHS` (plain ASGI, so that streaming
    responses and disconnects pass through untouched).

    The scheme is matched case-insensitively (RFC 7235), the key exactly and in constant time; a request with
    more than one Authorization header is refused (which of them would count is ambiguous).
    """

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, api_key.encode()

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        values = [value for name, value in headers if name.lower() == b"authorization"]
        if len(values) != 1:
            return False
        match = re.fullmatch(rb"[ \t]*([A-Za-z]+) +(\S+)[ \t]*", values[0])
        if match is None or match.group(1).lower() != b"bearer":
            return False
        return hmac.compare_digest(match.group(2), self.expected)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self.authorized(scope["headers"]):
            response = JSONResponse(error_body("missing or wrong API key: send `Authorization: Bearer <key>`",
                                               "invalid_request_error", None, "invalid_api_key"), status_code=401)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI application serving ``gateway`` (see the module docstring for the routes)."""
    app = FastAPI(title="SCM moderated gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    page = resources.files("serve.gateway").joinpath("static/index.html").read_text(encoding="utf-8")

    if gateway.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=gateway.api_key)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, err: GatewayError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
        return JSONResponse(error_body(message, "invalid_request_error", None, str(err.status_code)),
                            status_code=err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        # The exception's text may hold anything (paths, upstream text): the log has it, the client does not.
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body("internal error; the gateway logged it", "server_error"), status_code=500)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _start_session(gateway, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _start_session(gateway, request, "text")

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> JSONResponse:
        return JSONResponse(await _moderate(gateway, request))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": gateway.model_name, "object": "model", "created": 0,
                                            "owned_by": "scm-gateway"}]}

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        healthy = gateway.healthy and not gateway.draining
        return JSONResponse(gateway.describe(), status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        gateway.metrics.live_streams.set(gateway.scheduler.live_streams)
        gateway.metrics.worker_up.set(1 if gateway.healthy else 0)
        payload, content_type = gateway.metrics.exposition()
        return Response(payload, media_type=content_type)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
