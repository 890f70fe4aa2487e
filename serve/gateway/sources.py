"""Where a monitored response comes from: an OpenAI-compatible upstream (proxy mode) or a local HF causal LM.

Both are async iterators of pieces (text deltas from the upstream, token-id lists from the local generator) with a
``finish_reason`` once exhausted and an ``aclose()`` that cancels the work: the upstream's HTTP connection is
closed (the upstream server sees the client go away and stops generating), the local ``generate`` stops at its
next decoding step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from serve.gateway.protocol import GatewayError
from serve.gateway.upstream_wire import ChunkParser, SourceError, bounded_lines, status_error

__all__ = ["SourceError", "Upstream", "UpstreamStream", "GenerationParams", "LocalGenerator", "LocalRun",
           "redact_url"]

log = logging.getLogger("serve.gateway")
_END = object()


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what ``/health`` and the logs may show of the upstream.

    User name and password, path (some services put keys there), query (``?api-key=``) and fragment are left out.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}"


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without ``user:password@`` and the credentials (sent as Basic auth instead, so that they never
    appear in a URL that an error or a log line might print)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    credentials = (unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), credentials


# --------------------------------------------------------------------------------------------------- upstream

class Upstream:
    """An OpenAI-compatible server the gateway forwards requests to.

    Args:
        base_url: e.g. ``http://127.0.0.1:8001/v1`` (``/chat/completions`` and ``/completions`` are appended to its
            path); ``user:password@`` in it is sent as Basic auth; neither it nor its path or query is ever shown.
        api_key: Bearer key for the upstream, if it needs one.
        timeout: seconds to connect, and to wait for the response and for each further chunk.
        model: model name sent instead of the client's.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0,
                 model: str | None = None) -> None:
        url, credentials = _split_credentials(base_url)
        self.base_url = url
        self.display_url = redact_url(url)
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), headers=headers, auth=credentials,
                                        follow_redirects=False)

    async def open(self, kind: str, body: dict[str, Any]) -> "UpstreamStream":
        """Send the request (always streaming upstream, so that it can be monitored and cancelled).

        Args:
            kind: ``chat`` or ``text``.
            body: the client's request body (unknown fields are forwarded as they are).

        Raises:
            GatewayError: the upstream answered an error status (see :func:`~serve.gateway.upstream_wire.
                status_error`: 4xx stays 4xx, with a message of the gateway's), could not be reached (502) or did
                not answer in time (504). Messages never name the upstream's address.
        """
        payload = {key: value for key, value in body.items() if key != "stream_options"}
        payload["stream"] = True
        if self.model is not None:
            payload["model"] = self.model
        url = self.url_for("chat/completions" if kind == "chat" else "completions")
        try:
            response = await self.client.send(self.client.build_request("POST", url, json=payload), stream=True)
        except httpx.TimeoutException:
            raise GatewayError(504, "the upstream did not answer in time", type="upstream_timeout",
                               code="upstream_timeout") from None
        except httpx.HTTPError as err:
            log.warning(json.dumps({"event": "upstream_unreachable", "upstream": self.display_url,
                                    "error": type(err).__name__}))
            raise GatewayError(502, "the upstream cannot be reached", type="upstream_error",
                               code="upstream_unreachable") from None
        if response.status_code != 200:
            try:
                raw = await _read_capped(response)
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            log.warning(json.dumps({"event": "upstream_status", "upstream": self.display_url,
                                    "status": response.status_code}))
            raise status_error(response.status_code, raw, body.keys())
        return UpstreamStream(response, kind)

    def url_for(self, route: str) -> str:
        """The base URL with ``/route`` appended to its path (a query such as ``?api-version=`` stays last)."""
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{route}", parts.query, ""))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


async def _read_capped(response: httpx.Response, limit: int = 65536) -> bytes:
    """At most ``limit`` bytes of an error body (only its ``param`` and ``code`` are read)."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit])


class UpstreamStream:
    """The text deltas of one upstream SSE response, read through :class:`~serve.gateway.upstream_wire.ChunkParser`.

    Attributes:
        finish_reason: one of OpenAI's values once the upstream sent one.
        usage: the upstream's usage, validated (three integers), if it sent one.
    """

    def __init__(self, response: httpx.Response, kind: str) -> None:
        self.response, self.kind = response, kind
        self.parser = ChunkParser(kind)

    @property
    def finish_reason(self) -> str | None:
        return self.parser.finish_reason

    @property
    def usage(self) -> dict[str, int] | None:
        return self.parser.usage

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        parser = self.parser
        try:
            async for line in bounded_lines(self.response.aiter_bytes()):
                for delta in parser.line(line):
                    yield delta
                if parser.done:
                    break
        except httpx.TimeoutException:
            raise SourceError("the upstream stopped sending (timeout)", type="upstream_timeout") from None
        except httpx.HTTPError as err:
            log.warning(json.dumps({"event": "upstream_connection_failed", "error": type(err).__name__}))
            raise SourceError("the upstream connection failed") from None
        for delta in parser.flush():
            yield delta
        if not parser.done and parser.finish_reason is None:
            raise SourceError("the upstream closed the stream before it finished (no finish_reason, no [DONE])")

    async def aclose(self) -> None:
        """Close the HTTP response (and so the connection, when it is not finished)."""
        await self.response.aclose()


# --------------------------------------------------------------------------------------------------- local

@dataclass
class GenerationParams:
    """What a request asks of the local generator."""

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None


class LocalGenerator:
    """An HF causal LM generating in the gateway's process, one thread per live request.

    Args:
        model: the causal LM (eval mode, on its device).
        tokenizer: its tokenizer (its chat template renders chat requests).
        name: the model name to report.
        max_ahead: generated tokens the generator may be ahead of the monitor before it pauses.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str,
                 max_ahead: int = 64) -> None:
        self.model, self.tokenizer, self.name, self.max_ahead = model.eval(), tokenizer, name, max_ahead
        eos = model.generation_config.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    def input_ids(self, kind: str, messages: list[dict[str, str]] | None, prompt: str | None) -> list[int]:
        """The generator's input: the chat template over the messages (``chat``), or the raw prompt (``text``)."""
        if kind == "chat" and getattr(self.tokenizer, "chat_template", None):
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
            return list(encoded["input_ids"])
        if kind == "chat":
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return list(self.tokenizer(prompt)["input_ids"])

    def start(self, input_ids: list[int], params: GenerationParams) -> "LocalRun":
        """Start generating in a thread; returns the run (an async iterator of new token-id lists)."""
        run = LocalRun(self, input_ids, params, asyncio.get_running_loop())
        run.thread.start()
        return run


class _Relay(StoppingCriteria):
    """Hands each decoding step's new token to the run, pauses when too far ahead, halts on request."""

    def __init__(self, run: "LocalRun", prompt_length: int) -> None:
        self.run, self.consumed = run, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None,
                 **kwargs) -> torch.BoolTensor:
        run = self.run
        new = input_ids[0, self.consumed:].tolist()
        self.consumed = input_ids.shape[1]
        ended = False
        for position, token in enumerate(new):
            if token in run.generator.eos_ids:
                new, ended = new[:position], True
                break
        run.generated += len(new)
        if new:
            run.emit(new)
        with run.room:
            while run.ahead > run.generator.max_ahead and not run.halt.is_set():
                run.room.wait(0.05)
        stop = run.halt.is_set() or ended
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class LocalRun:
    """One local generation: an async iterator of token-id lists (end-of-sequence ids are never yielded)."""

    def __init__(self, generator: LocalGenerator, input_ids: list[int], params: GenerationParams,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.generator, self.params, self.loop = generator, params, loop
        self.input_ids = input_ids
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.halt = threading.Event()
        self.room = threading.Condition()
        self.ahead = 0
        self.generated = 0
        self.finish_reason: str | None = None
        self.thread = threading.Thread(target=self._generate, name="scm-generate", daemon=True)

    def emit(self, item: Any) -> None:
        if isinstance(item, list):
            with self.room:
                self.ahead += len(item)
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody reads any more
            self.halt.set()

    def _generate(self) -> None:
        generator, params = self.generator, self.params
        model = generator.model
        ids = torch.tensor([self.input_ids], device=model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": False}
        if params.temperature:  # None or 0: greedy
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p or 1.0)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=generator.tokenizer)
        pad = model.generation_config.pad_token_id
        if pad is None:
            pad = generator.tokenizer.pad_token_id if generator.tokenizer.pad_token_id is not None else \
                next(iter(generator.eos_ids), 0)
        try:
            with torch.inference_mode():
                output = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=pad,
                                        stopping_criteria=StoppingCriteriaList([_Relay(self, ids.shape[1])]),
                                        **kwargs)
            new = output[0, ids.shape[1]:].tolist()
            ended_by_eos = any(t in generator.eos_ids for t in new)
            self.finish_reason = "length" if len(new) >= params.max_new_tokens and not ended_by_eos else "stop"
            self.emit(_END)
        except BaseException as err:  # handed to the event loop, which ends the client's stream with an error
            log.error(json.dumps({"event": "local_generation_failed", "error": type(err).__name__}),
                      exc_info=err)
            self.emit(err)

    def __aiter__(self) -> AsyncIterator[list[int]]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[list[int]]:
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise SourceError("local generation failed", type="server_error")
            with self.room:
                self.ahead -= len(item)
                self.room.notify_all()
            yield item

    async def aclose(self) -> None:
        """Stop the generation at its next decoding step (does not wait for the thread)."""
        self.halt.set()
        with self.room:
            self.room.notify_all()
