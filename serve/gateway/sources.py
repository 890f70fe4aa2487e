"""Where a monitored response comes from: an OpenAI-compatible upstream (proxy mode) or a local HF causal LM.

Both are async iterators of pieces (text deltas from the upstream, token-id lists from the local generator) with a
``finish_reason`` once exhausted and an ``aclose()`` that cancels the work: the upstream's HTTP connection is
closed (the upstream server sees the client go away and stops generating), the local ``generate`` stops at its
next decoding step.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httpx
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from serve.gateway.protocol import GatewayError

_END = object()


class SourceError(Exception):
    """The response source failed after the response started (upstream error, timeout, malformed chunk).

    Attributes:
        type: ``upstream_error`` or ``upstream_timeout`` (OpenAI-style error type of the event sent to the client).
    """

    def __init__(self, message: str, type: str = "upstream_error") -> None:
        super().__init__(message)
        self.type = type


# --------------------------------------------------------------------------------------------------- upstream

class Upstream:
    """An OpenAI-compatible server the gateway forwards requests to.

    Args:
        base_url: e.g. ``http://127.0.0.1:8001/v1`` (``/chat/completions`` and ``/completions`` are appended).
        api_key: Bearer key for the upstream, if it needs one.
        timeout: seconds to connect, and to wait for the response and for each further chunk.
        model: model name sent instead of the client's.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0,
                 model: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), headers=headers)

    async def open(self, kind: str, body: dict[str, Any]) -> "UpstreamStream":
        """Send the request (always streaming upstream, so that it can be monitored and cancelled).

        Args:
            kind: ``chat`` or ``text``.
            body: the client's request body (unknown fields are forwarded as they are).

        Raises:
            GatewayError: the upstream answered an error status (its status and error body are relayed: 4xx stays
                4xx), could not be reached (502) or did not answer in time (504).
        """
        payload = {key: value for key, value in body.items() if key != "stream_options"}
        payload["stream"] = True
        if self.model is not None:
            payload["model"] = self.model
        url = f"{self.base_url}/{'chat/completions' if kind == 'chat' else 'completions'}"
        try:
            response = await self.client.send(self.client.build_request("POST", url, json=payload), stream=True)
        except httpx.TimeoutException:
            raise GatewayError(504, f"the upstream {self.base_url} did not answer in time", type="upstream_timeout",
                               code="upstream_timeout") from None
        except httpx.HTTPError as err:
            raise GatewayError(502, f"the upstream {self.base_url} cannot be reached: {err}", type="upstream_error",
                               code="upstream_unreachable") from None
        if response.status_code != 200:
            raw = await response.aread()
            await response.aclose()
            raise _relayed_error(response.status_code, raw, self.base_url)
        return UpstreamStream(response, kind)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def _relayed_error(status: int, raw: bytes, base_url: str) -> GatewayError:
    message = f"the upstream {base_url} answered HTTP {status}"
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    error = error if isinstance(error, dict) else {}
    if isinstance(error.get("message"), str):
        message = f"{message}: {error['message']}"
    # The client's own mistakes (a bad parameter, an unknown model, too long) and rate limits keep their status;
    # everything else, the upstream rejecting the gateway's key included, is a bad gateway.
    relayed = status if status in (400, 404, 413, 422, 429) else 502
    return GatewayError(relayed, message, type=error.get("type") or "upstream_error", param=error.get("param"),
                        code=error.get("code"))


class UpstreamStream:
    """The text deltas of one upstream SSE response."""

    def __init__(self, response: httpx.Response, kind: str) -> None:
        self.response, self.kind = response, kind
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        done = False
        try:
            async for line in self.response.aiter_lines():
                if not line or line.startswith(":") or not line.startswith("data:"):
                    continue  # blank separators, comments, event:/id: fields
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    done = True
                    break
                for delta in self._parse(data):
                    yield delta
        except httpx.TimeoutException:
            raise SourceError("the upstream stopped sending (timeout)", type="upstream_timeout") from None
        except httpx.HTTPError as err:
            raise SourceError(f"the upstream connection failed: {err}") from None
        if not done and self.finish_reason is None:
            raise SourceError("the upstream closed the stream before it finished (no finish_reason, no [DONE])")

    def _parse(self, data: str) -> list[str]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise SourceError(f"the upstream sent a malformed chunk (not JSON): {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise SourceError(f"the upstream sent a malformed chunk (not an object): {data[:80]!r}")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise SourceError(f"the upstream reported an error mid-stream: {message}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise SourceError(f"the upstream sent a malformed chunk (no choices list): {data[:80]!r}")
        deltas = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise SourceError(f"the upstream sent a malformed choice: {data[:80]!r}")
            if self.kind == "chat":
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if not isinstance(delta, dict) or delta.get("tool_calls"):
                    raise SourceError("the upstream sent a delta the gateway cannot monitor (tool calls or a "
                                      "malformed delta)")
            else:
                content = choice.get("text")
            if content is not None and not isinstance(content, str):
                raise SourceError(f"the upstream sent non-text content: {data[:80]!r}")
            if content:
                deltas.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return deltas

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
            self.emit(err)

    def __aiter__(self) -> AsyncIterator[list[int]]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[list[int]]:
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise SourceError(f"local generation failed: {item}", type="server_error")
            with self.room:
                self.ahead -= len(item)
                self.room.notify_all()
            yield item

    async def aclose(self) -> None:
        """Stop the generation at its next decoding step (does not wait for the thread)."""
        self.halt.set()
        with self.room:
            self.room.notify_all()
