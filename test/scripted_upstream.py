"""A scripted OpenAI-compatible server: streams canned responses, optionally faulty, for gateway tests and benchmarks.

It answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming or not) with a response chosen
by the prompt (a fixed mapping, else a deterministic text drawn from :data:`PARAGRAPHS`), cut into deltas (one word
each, or random 0-8 character pieces with ``--chunking random``), one delta every ``1 / --deltas-per-second``
seconds. The request's ``model`` field injects faults: ``fault:status`` (HTTP 500 before streaming),
``fault:error`` (an error event mid-stream), ``fault:malformed`` (a chunk that is not JSON mid-stream),
``fault:timeout`` (stops sending mid-stream for ``--stall-seconds``), ``fault:drop`` (closes the connection
mid-stream without a finish). It counts live streams and streams whose client went away, so tests can check that
the gateway cancelled them. It never moderates anything.

For the gateway's hardening tests it also plays a hostile upstream: a :class:`Script` registered for a prompt is
answered byte for byte as written (any status, any SSE lines, keepalive comments forever, lone surrogates, giant
chunks, error events, fields a client must never see); :func:`data_line` and :func:`chat_chunk` build its lines.

Commands::

    python -m test.scripted_upstream --port 8001                                  # serve until Ctrl-C
    python -m test.scripted_upstream --port 8001 --deltas-per-second 20 --response-words 100
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from utils.cli import run_entry_point

PARAGRAPHS = [
    "The museum opens at nine in the morning and closes at six. Tickets can be bought online or at the door, and "
    "children under twelve enter for free. Guided tours leave every hour from the main hall.",
    "To bake bread, mix flour, water, salt and yeast, then knead the dough for ten minutes until it is smooth. Let "
    "it rise for an hour in a warm place, shape it, and bake it at two hundred and twenty degrees.",
    "Regular exercise improves sleep, mood and heart health. Start with short walks, add a few minutes each week, "
    "and choose activities you enjoy so that the habit lasts. Rest days matter as much as training days.",
    "A budget starts with a list of income and fixed costs. Whatever remains is split between savings, food, "
    "transport and leisure. Review it every month and adjust the categories that keep running over.",
    "The river rises in the mountains, crosses three valleys and reaches the sea after four hundred kilometres. "
    "Its delta is home to herons, otters and many kinds of fish, and the old town grew where two branches meet.",
    "Good documentation says what a tool does, shows one complete example, lists every option with its default, "
    "and explains the errors a user is likely to meet. It is tested like code, because it goes stale like code.",
]


@dataclass
class UpstreamArguments:
    """Flags of ``python -m test.scripted_upstream``."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=8001, metadata={"help": "Port to listen on."})
    deltas_per_second: float = field(default=0.0, metadata={"help": "Deltas per second per stream (0: no delay)."})
    response_words: int = field(default=0, metadata={
        "help": "Words per response (0: one paragraph; more repeats paragraphs)."})
    chunking: str = field(default="words", metadata={"help": "words or random (0-8 characters).",
                                                     "choices": ["words", "random"]})
    stall_seconds: float = field(default=30.0, metadata={"help": "How long fault:timeout stalls."})
    seed: int = field(default=0, metadata={"help": "Seed of the random chunking."})


def text_for(prompt: str, words: int = 0) -> str:
    """The deterministic response to ``prompt``: paragraphs chosen by its hash, ``words`` long (0: one)."""
    start = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16) % len(PARAGRAPHS)
    if words <= 0:
        return PARAGRAPHS[start]
    out: list[str] = []
    index = start
    while len(out) < words:
        out += PARAGRAPHS[index % len(PARAGRAPHS)].split()
        index += 1
    return " ".join(out[:words])


def split_deltas(text: str, chunking: str, rng: random.Random) -> list[str]:
    """Cut a response into deltas: one word (with its leading space) each, or random 0-8 character pieces."""
    if chunking == "words":
        return re.findall(r"\s*\S+\s*$|\s*\S+", text)
    pieces, at = [], 0
    while at < len(text):
        size = rng.choice([0, 1, 1, 2, 3, 5, 8])
        pieces.append(text[at: at + size])
        at += size
    return pieces


@dataclass
class Script:
    """A raw answer to one prompt, sent exactly as written.

    Attributes:
        parts: the body: str or bytes parts are written as they are, a float sleeps that many seconds.
        status: the HTTP status (the parts are then the body of the error response).
        repeat: parts sent again and again after ``parts`` until the client goes away (keepalives, an endless
            response).
    """

    parts: list[str | bytes | float]
    status: int = 200
    repeat: list[str | bytes | float] | None = None


def data_line(payload: Any) -> str:
    """One SSE event ``data: <json>`` (a str payload is sent as it is, e.g. ``[DONE]`` or broken JSON)."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def chat_chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> str:
    """A chat completion chunk's SSE event (``extra`` adds top-level fields such as ``usage`` or ``error``)."""
    delta = {} if content is None else {"content": content}
    return data_line({"id": "scripted", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


class ScriptedUpstream:
    """The server's state: settings, the prompt -> response mapping, raw scripts, and counters."""

    def __init__(self, args: UpstreamArguments, responses: dict[str, str] | None = None,
                 respond: Callable[[str], str] | None = None, scripts: dict[str, Script] | None = None) -> None:
        self.args = args
        self.responses = responses or {}
        self.respond = respond
        self.scripts = scripts or {}
        self.live = 0
        self.started = 0
        self.completed = 0
        self.client_gone = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def response_text(self, prompt: str) -> str:
        if prompt in self.responses:
            return self.responses[prompt]
        if self.respond is not None:
            return self.respond(prompt)
        return text_for(prompt, self.args.response_words)


def _prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        users = [m.get("content") or "" for m in body["messages"] if m.get("role") == "user"]
        return users[-1] if users else ""
    return body.get("prompt") or ""


def create_upstream_app(state: ScriptedUpstream) -> FastAPI:
    """The FastAPI app of a :class:`ScriptedUpstream`."""
    app = FastAPI()
    app.state.upstream = state

    def scripted(script: Script) -> Response:
        def encode(part: str | bytes) -> bytes:
            return part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")

        if script.status != 200:
            body = b"".join(encode(p) for p in script.parts if not isinstance(p, float))
            return Response(body, status_code=script.status, media_type="application/json")

        async def events() -> AsyncIterator[bytes]:
            state.live += 1
            state.started += 1
            try:
                for part in script.parts:
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    else:
                        yield encode(part)
                while script.repeat:
                    for part in script.repeat:
                        if isinstance(part, float):
                            await asyncio.sleep(part)
                        else:
                            yield encode(part)
                state.completed += 1
            except asyncio.CancelledError:
                state.client_gone += 1
                raise
            finally:
                state.live -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def handle(request: Request, kind: str) -> Response:
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        script = state.scripts.get(_prompt_of(body))
        if script is not None:
            return scripted(script)
        fault = str(body.get("model", ""))
        if fault == "fault:status":
            return JSONResponse({"error": {"message": "scripted upstream failure", "type": "server_error"}},
                                status_code=500)
        if fault == "fault:bad-request":
            return JSONResponse({"error": {"message": "scripted bad request", "type": "invalid_request_error",
                                           "param": "temperature", "code": None}}, status_code=400)
        text = state.response_text(_prompt_of(body))
        rng = random.Random(f"{state.args.seed}:{_prompt_of(body)}")
        deltas = split_deltas(text, state.args.chunking, rng)
        created = int(time.time())

        def chunk(content: str | None, finish: str | None) -> str:
            if kind == "chat":
                choice = {"index": 0, "delta": {} if content is None else {"content": content},
                          "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": content or "", "finish_reason": finish}
                obj = "text_completion"
            return "data: " + json.dumps({"id": "scripted", "object": obj, "created": created,
                                          "model": "scripted", "choices": [choice]}) + "\n\n"

        if not body.get("stream"):
            message = ({"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text})
            return JSONResponse({"id": "scripted", "object": "chat.completion" if kind == "chat" else
                                 "text_completion", "created": created, "model": "scripted",
                                 "choices": [{"index": 0, "finish_reason": "stop", **message}]})
        fault_at = max(1, len(deltas) // 3)
        delay = 1.0 / state.args.deltas_per_second if state.args.deltas_per_second > 0 else 0.0

        async def events() -> AsyncIterator[str]:
            state.live += 1
            state.started += 1
            try:
                for number, delta in enumerate(deltas):
                    if number == fault_at and fault.startswith("fault:"):
                        if fault == "fault:error":
                            yield 'data: {"error": {"message": "scripted mid-stream failure"}}\n\n'
                            return
                        if fault == "fault:malformed":
                            yield "data: {this is not json\n\n"
                            return
                        if fault == "fault:timeout":
                            await asyncio.sleep(state.args.stall_seconds)
                        if fault == "fault:drop":
                            return
                    yield chunk(delta, None)
                    if delay:
                        await asyncio.sleep(delay)
                    else:
                        await asyncio.sleep(0)
                yield chunk(None, "stop")
                yield "data: [DONE]\n\n"
                state.completed += 1
            except asyncio.CancelledError:
                state.client_gone += 1
                raise
            finally:
                state.live -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, "text")

    return app


def main(args: UpstreamArguments) -> None:
    """Serve the scripted upstream until stopped."""
    import uvicorn

    uvicorn.run(create_upstream_app(ScriptedUpstream(args)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_entry_point(main, UpstreamArguments, "python -m test.scripted_upstream")
