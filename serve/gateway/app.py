"""The gateway's HTTP application (FastAPI): OpenAI-compatible routes around the monitor scheduler.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming SSE or not), ``POST /v1/moderations``,
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus) and ``GET /`` (the chat page). Build it with
:func:`create_app`; ``python -m serve.gateway`` (``bash scripts/run-serve.sh``) loads the models and serves it.

One request's life (:class:`Session`): the prompt the monitor reads is taken from the request (chat: the last user
message by default, see :func:`~serve.gateway.protocol.chat_prompt_text`); a stream slot is taken (429 when none is
free); the response source is opened (proxy: the upstream request, whose error status is relayed; local: a
generation thread); a pump task moves the source's pieces into the scheduler while the response reads the
scheduler's events and sends only released, scored text. On a stop the source is cancelled at once and the
final chunk says ``finish_reason: "content_filter"`` with the ``moderation`` object; on a source failure the client
gets an error event and nothing that was not scored; whatever way the request ends (client gone, error,
shutdown), :meth:`Session.close` cancels the source and frees the stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from importlib import resources
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.gateway.metrics import GatewayMetrics
from serve.gateway.protocol import (ChatCompletionRequest, CompletionRequest, GatewayError, ModerationRequest,
                                    ResponseWriter, chat_prompt_text, error_body, new_id, parse_request, sse)
from serve.gateway.scheduler import (IDS, TEXT, MonitorScheduler, MonitoredStream, Overloaded, StreamEvent,
                                     span_texts)
from serve.gateway.sources import GenerationParams, LocalGenerator, SourceError, Upstream
from serve.gateway.detokenize import IncrementalDetokenizer
from serve.monitor import StreamingMonitor

log = logging.getLogger("serve.gateway")
OPEN_PATHS = ("/health", "/", "/favicon.ico")


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
        info: extra facts for ``/health`` (checkpoint path, generator path).
    """

    def __init__(self, monitor: StreamingMonitor, *, upstream: Upstream | None = None,
                 generator: LocalGenerator | None = None, model_name: str | None = None,
                 chat_prompt: str = "last-user", max_tokens: int = 256, api_key: str | None = None,
                 retry_after: int = 1, scheduler_options: dict[str, Any] | None = None,
                 info: dict[str, Any] | None = None) -> None:
        if (upstream is None) == (generator is None):
            raise ValueError("a gateway needs exactly one response source: an upstream or a local generator")
        if monitor.tokenizer is None:
            raise ValueError("the monitor has no tokenizer (its checkpoint folder holds none); the gateway needs it")
        self.monitor, self.upstream, self.generator = monitor, upstream, generator
        self.mode = "proxy" if upstream is not None else "local"
        self.model_name = model_name or (generator.name if generator is not None else "upstream")
        self.chat_prompt, self.max_tokens = chat_prompt, max_tokens
        self.api_key, self.retry_after = api_key, retry_after
        self.info = info or {}
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

    def check_prompt(self, prompt: str) -> int:
        """The monitor's prompt length.

        Raises:
            GatewayError: 400 when the prompt leaves the monitor no room for a response.
        """
        length = len(self.monitor.encode_prompt(prompt))
        if length >= self.monitor.max_length:
            raise GatewayError(400, f"the prompt is {length} tokens for the monitor, which reads at most "
                                    f"{self.monitor.max_length} tokens (prompt and response); shorten it",
                               param="messages", code="context_length_exceeded")
        return length

    def moderation(self, stream: MonitoredStream, event: StreamEvent | None) -> dict[str, Any]:
        """The ``moderation`` object of a final chunk or response."""
        monitor = self.monitor
        body: dict[str, Any] = {"flagged": False, "stopped": False, "rule": monitor.rule.name,
                                "theta": monitor.theta, "k": _rule_parameter(monitor), "scorer": monitor.scorer,
                                "tokens_scored": stream.tokens_scored, "max_score": stream.max_score,
                                "chars_released": stream.released_chars}
        if event is not None and event.stop is not None:
            stop = event.stop.event
            body.update(flagged=True, stopped=True, response_token_index=stop.index, token=event.stop.token_text,
                        token_id=stop.token_id, score=stop.score, count=stop.count,
                        chars_withheld=stream.chars_withheld())
        if stream.unmonitored:
            body["unmonitored"] = True
        # OpenAI's own (newer) `moderation` field has {input, output} in its moderation-results shape; carrying
        # both keeps strict clients that validate it working. Only the output is moderated here.
        score = body.get("score", stream.max_score) or 0.0
        model = f"scm:{self.info.get('model_path', 'monitor')}"
        body["input"] = {"type": "error", "code": "not_moderated",
                         "message": "the gateway monitors the response, not the request"}
        body["output"] = {"type": "moderation_results", "model": model, "results": [{
            "type": "moderation_result", "model": model, "flagged": body["flagged"],
            "categories": {"harmful": body["flagged"]}, "category_scores": {"harmful": score},
            "category_applied_input_types": {"harmful": ["text"]}}]}
        return body

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports."""
        return {"status": "draining" if self.draining else "ok", "mode": self.mode, "model": self.model_name,
                "live_streams": self.scheduler.live_streams, "max_streams": self.scheduler.max_streams,
                "hold_back": self.scheduler.hold_back, "on_monitor_error": self.scheduler.on_error,
                "chat_prompt": self.chat_prompt,
                "monitor": {**monitor_settings(self.monitor), "device": str(self.monitor.device)},
                "monitors_ids_directly": self.ids_path, **self.info}


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
        except Exception as err:  # an unexpected source failure must still end the client's stream
            log.exception("response source failed")
            self.interrupt(f"the response source failed: {err}", "upstream_error")

    def interrupt(self, message: str, type: str) -> None:
        """End the client's stream with an error event (source failure, shutdown); nothing more is released."""
        if not self.stream.closed and self.error_type is None:
            self.error_type = type
            self.stream.interrupt(message)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """``("content", text, tokens)`` for released text, then one ``("final", finish_reason, moderation)`` or
        ``("error", GatewayError)``."""
        stream = self.stream
        while True:
            event = await stream.next_event()
            if event.error is not None and not event.unmonitored:
                type = self.error_type or "monitor_error"
                self.outcome = "shutdown" if type == "server_shutdown" else "error"
                if type == "monitor_error":
                    self.gateway.metrics.monitor_errors.inc()
                status = {"upstream_timeout": 504, "server_shutdown": 503, "monitor_error": 500}.get(type, 502)
                await self._cancel_source()
                yield "error", GatewayError(status, event.error if type != "monitor_error" else
                                            f"{event.error}; the response was withheld (the gateway fails closed)",
                                            type=type, code=type)
                return
            if event.error is not None:  # on_monitor_error=open: the rest passes through unmonitored
                self.gateway.metrics.monitor_errors.inc()
                log.warning(json.dumps({"event": "monitor_error_fail_open", "stream": stream.id,
                                        "error": event.error}))
            if event.released or event.tokens:
                self.completion_tokens += len(event.tokens)
                yield "content", event.released, event.tokens
            if event.stop is not None:
                self.stop_event = event
                await self._cancel_source()
                self.outcome = "stopped"
                moderation = self.gateway.moderation(stream, event)
                self.gateway.metrics.stops.inc()
                self.gateway.metrics.chars_withheld.inc(moderation["chars_withheld"])
                generated = getattr(self.source, "generated", None)
                if self.budget is not None and generated is not None:
                    self.gateway.metrics.tokens_saved.inc(max(0, self.budget - generated))
                yield "final", "content_filter", moderation
                return
            if event.finished:
                self.outcome = "finished"
                await self._pump
                finish = getattr(self.source, "finish_reason", None) or "stop"
                yield "final", finish, self.gateway.moderation(stream, None)
                return

    def usage(self) -> dict[str, int] | None:
        """Token usage: local mode counts the generator's tokens; proxy mode relays the upstream's, if it sent one."""
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
        log.info(json.dumps(record))

    async def sse(self) -> AsyncIterator[bytes]:
        """The SSE body of a streaming response."""
        if self.kind == "chat":
            yield sse(self.writer.role_chunk())
        async for item in self.events():
            if item[0] == "content":
                yield sse(self.writer.content_chunk(item[1], item[2]))
            elif item[0] == "final":
                yield sse(self.writer.final_chunk(item[1], item[2]))
                if self.include_usage:
                    yield sse(self.writer.usage_chunk(self.usage() or {}))
                yield sse("[DONE]")
            else:
                yield sse(item[1].body())
        await self.close()

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
                return self.writer.response("".join(parts), item[1], item[2], self.usage())
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


async def _start_session(gateway: Gateway, request: Request, kind: str) -> Response:
    raw = await request.body()
    if gateway.draining:
        raise GatewayError(503, "the server is shutting down; retry the request", type="server_shutdown",
                           code="server_shutdown")
    model = ChatCompletionRequest if kind == "chat" else CompletionRequest
    req = parse_request(model, raw)
    body = json.loads(raw)
    if kind == "chat":
        prompt = chat_prompt_text(req.messages, gateway.chat_prompt)
    else:
        prompt = req.prompt
    monitor_prompt_length = gateway.check_prompt(prompt)
    route = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    budget, prompt_tokens, input_ids = req.token_budget(), None, None
    if gateway.mode == "local":
        generator = gateway.generator
        messages = [{"role": m.role, "content": m.text()} for m in req.messages] if kind == "chat" else None
        input_ids = generator.input_ids(kind, messages, prompt if kind == "text" else None)
        prompt_tokens = len(input_ids)
        room = gateway.monitor.max_length - monitor_prompt_length
        if generator.max_length is not None:
            room = min(room, generator.max_length - prompt_tokens)
        if room < 1:
            raise GatewayError(400, f"the prompt is {prompt_tokens} tokens for the generator, which reads at most "
                                    f"{generator.max_length}; shorten it", param="messages",
                               code="context_length_exceeded")
        # The response is cut at the room left in the monitor and the generator (finish_reason "length").
        budget = min(budget or gateway.max_tokens, room)
    stream_kind = IDS if gateway.ids_path else TEXT
    try:
        stream = await gateway.scheduler.open(prompt, stream_kind)
    except Overloaded:
        gateway.metrics.rejected.inc()
        raise GatewayError(429, f"all {gateway.scheduler.max_streams} stream slots are busy; retry after "
                                f"{gateway.retry_after} s", type="rate_limit_error", code="too_many_streams",
                           headers={"Retry-After": str(gateway.retry_after)}) from None
    try:
        if gateway.mode == "proxy":
            source = await gateway.upstream.open(kind, body)
        else:
            stop = [req.stop] if isinstance(req.stop, str) else req.stop
            source = gateway.generator.start(input_ids, GenerationParams(budget, req.temperature, req.top_p, stop))
    except BaseException:
        gateway.scheduler.close(stream)
        raise
    writer = ResponseWriter(kind, req.model or gateway.model_name)
    session = Session(gateway, kind, stream, source, writer, budget, prompt_tokens, route)
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
            await session.close("disconnected")
    if collect.cancelled():
        return Response(status_code=499)
    try:
        return JSONResponse(collect.result())
    except GatewayError as err:
        return _error_response(err)


async def _moderate(gateway: Gateway, request: Request) -> dict[str, Any]:
    req = parse_request(ModerationRequest, await request.body())
    texts = [req.input] if isinstance(req.input, str) else req.input
    if len(texts) > gateway.scheduler.max_streams:
        raise GatewayError(400, f"input holds {len(texts)} texts; send at most {gateway.scheduler.max_streams} per "
                                f"request", param="input", code="too_many_inputs")
    tokenizer = gateway.monitor.tokenizer
    prompt_length = gateway.check_prompt(req.prompt)
    id_lists = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    for number, ids in enumerate(id_lists):
        if prompt_length + len(ids) > gateway.monitor.max_length:
            raise GatewayError(400, f"input {number} is {len(ids)} tokens; with the prompt the monitor reads at most "
                                    f"{gateway.monitor.max_length}", param="input", code="context_length_exceeded")

    def score(monitor: StreamingMonitor) -> list[Any]:
        states = monitor.start_many([req.prompt] * len(texts))
        try:
            return monitor.push_many(states, id_lists)
        finally:
            for state in states:
                monitor.close(state)

    results = await gateway.scheduler.run_job(score)
    out = []
    for text, ids, result in zip(texts, id_lists, results):
        peak = max(result.scores) if result.scores else 0.0
        item: dict[str, Any] = {"flagged": result.stop is not None, "categories": {"harmful": result.stop is not None},
                                "category_scores": {"harmful": peak}, "scm": {**monitor_settings(gateway.monitor),
                                                                             "tokens_scored": len(ids)}}
        if result.stop is not None:
            start = tokenizer.decode(ids[:result.stop.index])
            item["scm"].update(response_token_index=result.stop.index, score=result.stop.score,
                               count=result.stop.count, token=tokenizer.decode([result.stop.token_id]),
                               char_start=len(start))
        if req.return_token_scores:
            item["scm"]["tokens"] = [{"text": t, "score": s}
                                     for t, s in zip(span_texts(tokenizer, text, ids), result.scores)]
        out.append(item)
    return {"id": new_id("modr"), "model": req.model or f"scm-{gateway.model_name}", "results": out}


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every path except :data:`OPEN_PATHS` (plain ASGI, so that streaming
    responses and disconnects pass through untouched)."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(header, self.expected):
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
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {err}", "server_error"), status_code=500)

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

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(gateway.describe(), status_code=503 if gateway.draining else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        gateway.metrics.live_streams.set(gateway.scheduler.live_streams)
        payload, content_type = gateway.metrics.exposition()
        return Response(payload, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
