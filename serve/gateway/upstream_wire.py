"""The one place that reads what an upstream sends: everything becomes scored text or a gateway-authored value.

An upstream is untrusted: a compromised server, a buggy one, or an honest one whose model was prompt-injected into
writing whatever an attacker wants. Anything it sends that reached the client without passing the monitor would be
a bypass, and anything that crashed the gateway would take every other stream down with it. So the proxy reads the
upstream only through this module, which turns

- the ``content`` (chat) or ``text`` (completions) of each choice into text deltas for the monitor, as valid
  Unicode: a UTF-16 surrogate pair split across two chunks is joined, any other lone surrogate becomes U+FFFD
  (:class:`SurrogateRepair`), because the monitor's tokenizer cannot encode half a character;
- ``finish_reason`` into one of OpenAI's values (anything else reads ``stop``);
- ``usage`` into ``{"prompt_tokens", "completion_tokens", "total_tokens"}`` of non-negative integers, or nothing;
- an error event, a malformed chunk, an error status into a fixed message written here (the status and a
  ``param`` that names a field of the client's own request are kept, nothing of the upstream's text).

Every other field (ids, model names, tool calls' arguments, ``reasoning_content``, ``refusal``, ``logprobs``, SSE
``event:``/``id:`` fields and comments) is dropped. Tool-call deltas end the stream with an error, because the
gateway cannot monitor them and the client asked for text.

Reading is bounded too: an SSE line longer than :data:`MAX_SSE_LINE_BYTES` ends the stream (an upstream that never
sends a newline must not grow the gateway's memory), and JSON nested deeper than Python's recursion limit is a
malformed chunk, not a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable

from serve.gateway.protocol import GatewayError

# OpenAI's finish reasons; an upstream's other values ("abort", "eos_token", free text) read "stop".
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls", "function_call"})
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
# Larger than any honest chunk (a chunk carries a few tokens; 84 KB ones are already odd), small enough that one
# upstream cannot hold much of the gateway's memory.
MAX_SSE_LINE_BYTES = 1 << 20
# Upstream error codes that say something useful to the client and carry no text of the upstream's choosing.
RELAYED_ERROR_CODES = frozenset({"context_length_exceeded", "model_not_found", "invalid_value", "invalid_type",
                                 "missing_required_parameter", "unknown_parameter", "unsupported_value",
                                 "rate_limit_exceeded", "insufficient_quota"})
# Request fields an upstream's error may name in ``param`` (besides the client's own fields): OpenAI's parameters.
OPENAI_PARAMS = frozenset({"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
                           "top_p", "n", "stop", "stream", "stream_options", "presence_penalty", "frequency_penalty",
                           "logit_bias", "logprobs", "top_logprobs", "user", "seed", "response_format", "tools",
                           "tool_choice", "suffix", "echo", "best_of"})
# Client mistakes and rate limits keep their status; anything else (the upstream rejecting the gateway's own key,
# a 5xx, a redirect) is a bad gateway.
RELAYED_STATUSES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
                    422: "invalid_request_error", 429: "rate_limit_error"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_USAGE_MAX = 2**53  # integers any JSON client reads exactly


class SourceError(Exception):
    """The response source failed after the response started (upstream error, timeout, malformed chunk).

    The message is the gateway's own (it reaches the client): never put upstream text in it.

    Attributes:
        type: ``upstream_error``, ``upstream_timeout`` or ``server_error`` (the error event's type).
    """

    def __init__(self, message: str, type: str = "upstream_error") -> None:
        super().__init__(message)
        self.type = type


class SurrogateRepair:
    """Make upstream text valid Unicode, delta by delta.

    JSON lets a string hold ``\\ud83d`` alone, and an upstream that cuts its text between the two UTF-16 halves of
    an emoji sends exactly that: the high half at the end of one delta, the low half at the start of the next. A
    high surrogate at the end of a delta is therefore kept until the next delta (:meth:`add`) or the end of the
    stream (:meth:`flush`); a pair that meets is joined into its character; every other lone surrogate becomes
    U+FFFD, the character the UTF-8 decoder substitutes for broken input too.
    """

    def __init__(self) -> None:
        self._high = ""

    def add(self, text: str) -> str:
        """The valid text of ``text`` (with a high surrogate held from the previous delta in front)."""
        text = self._high + text
        self._high = ""
        if text.isascii() or _SURROGATE.search(text) is None:
            return text
        if "\ud800" <= text[-1] <= "\udbff":
            text, self._high = text[:-1], text[-1]
        # UTF-16 round trip: a high-low pair becomes one code point, a lone half becomes U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

    def flush(self) -> str:
        """U+FFFD for a high surrogate whose low half never came, else ``""``."""
        held, self._high = self._high, ""
        return "\ufffd" if held else ""


def clean_usage(usage: Any) -> dict[str, int] | None:
    """An upstream's ``usage`` as three non-negative integers, or None when it is anything else.

    ``total_tokens`` may be missing (it is then the sum); any other key is dropped.
    """
    if not isinstance(usage, dict):
        return None

    def count(value: Any) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _USAGE_MAX
        return value if ok else None

    prompt, completion = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    total = count(usage.get("total_tokens")) if "total_tokens" in usage else prompt + completion
    if total is None:
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def clean_finish_reason(value: Any) -> str | None:
    """An upstream's ``finish_reason``: None (not finished), one of OpenAI's values, else ``stop``."""
    if value is None:
        return None
    return value if isinstance(value, str) and value in FINISH_REASONS else "stop"


def status_error(status: int, raw: bytes, client_fields: Iterable[str]) -> GatewayError:
    """The client's error for an upstream that answered ``status`` instead of a stream.

    Only the status (4xx kept for the client's own mistakes, else 502), an error type chosen by it, a code from
    :data:`RELAYED_ERROR_CODES` and a ``param`` naming one of OpenAI's parameters or of the client's own request
    fields survive (values the gateway could have written itself); the
    upstream's message does not (the upstream may be made to write anything there).

    Args:
        status: the upstream's HTTP status.
        raw: the upstream's body (read for ``param`` and ``code`` only).
        client_fields: the top-level field names of the client's request.
    """
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    error = error if isinstance(error, dict) else {}
    param, code = error.get("param"), error.get("code")
    param = param if isinstance(param, str) and (param in OPENAI_PARAMS or param in set(client_fields)) else None
    code = code if isinstance(code, str) and code in RELAYED_ERROR_CODES else None
    if status in RELAYED_STATUSES:
        if status == 429:
            message = "the upstream is rate-limiting requests (HTTP 429); retry later"
        else:
            message = f"the upstream rejected the request (HTTP {status})"
            message += f": check the field {param!r}" if param else ""
        return GatewayError(status, message, type=RELAYED_STATUSES[status], param=param,
                            code=code or f"upstream_http_{status}")
    return GatewayError(502, f"the upstream failed (HTTP {status})", type="upstream_error",
                        code="upstream_http_error")


@dataclass
class ParsedChunk:
    """What one upstream data line holds for the gateway."""

    deltas: list[str]
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class ChunkParser:
    """Parse the ``data:`` lines of one upstream SSE stream (see the module docstring).

    Args:
        kind: ``chat`` (``choices[].delta.content``) or ``text`` (``choices[].text``).

    Attributes:
        finish_reason: the last finish reason seen (cleaned), None before.
        usage: the last valid usage seen, None before.
        done: ``data: [DONE]`` was seen.
    """

    def __init__(self, kind: str) -> None:
        if kind not in ("chat", "text"):
            raise ValueError(f"kind must be 'chat' or 'text', got {kind!r}")
        self.kind = kind
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.done = False
        self._repair = SurrogateRepair()

    def line(self, line: str) -> list[str]:
        """The text deltas of one SSE line (blank lines, comments and non-data fields give none).

        Raises:
            SourceError: an error event, a malformed chunk, a tool call (fixed messages).
        """
        if not line.startswith("data:") or self.done:
            return []  # blank separators, ": keepalive" comments, event:/id:/retry: fields, text after [DONE]
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            self.done = True
            return []
        return self.chunk(data).deltas

    def chunk(self, data: str) -> ParsedChunk:
        """Parse one chunk's JSON (updates :attr:`finish_reason` and :attr:`usage`).

        Raises:
            SourceError: as :meth:`line`.
        """
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            raise SourceError("the upstream sent a malformed chunk (not JSON)") from None
        if not isinstance(chunk, dict):
            raise SourceError("the upstream sent a malformed chunk (not a JSON object)")
        if chunk.get("error") is not None:
            raise SourceError("the upstream reported an error mid-stream")
        parsed = ParsedChunk([])
        if "usage" in chunk and chunk["usage"] is not None:
            parsed.usage = clean_usage(chunk["usage"])
            self.usage = parsed.usage or self.usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise SourceError("the upstream sent a malformed chunk (no choices list)")
        for choice in choices:
            if not isinstance(choice, dict):
                raise SourceError("the upstream sent a malformed chunk (a choice is not an object)")
            if self.kind == "chat":
                delta = choice.get("delta")
                delta = {} if delta is None else delta
                if not isinstance(delta, dict):
                    raise SourceError("the upstream sent a malformed chunk (a delta is not an object)")
                if delta.get("tool_calls") or delta.get("function_call"):
                    raise SourceError("the upstream sent a tool call, which the gateway cannot monitor")
                content = delta.get("content")
            else:
                content = choice.get("text")
            if content is not None and not isinstance(content, str):
                raise SourceError("the upstream sent non-text content")
            if content:
                text = self._repair.add(content)
                if text:
                    parsed.deltas.append(text)
            reason = clean_finish_reason(choice.get("finish_reason"))
            if reason is not None:
                parsed.finish_reason = self.finish_reason = reason
        return parsed

    def flush(self) -> list[str]:
        """Deltas still held at the end of the stream (a dangling surrogate half, as U+FFFD)."""
        tail = self._repair.flush()
        return [tail] if tail else []


async def bounded_lines(chunks: AsyncIterator[bytes], max_bytes: int = MAX_SSE_LINE_BYTES) -> AsyncIterator[str]:
    """The lines of a byte stream (``\\n`` or ``\\r\\n`` ended), decoded as UTF-8 (bad bytes become U+FFFD).

    Raises:
        SourceError: a line (or the unterminated rest) grows beyond ``max_bytes``.
    """
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > max_bytes:
                raise SourceError(f"the upstream sent an SSE line longer than {max_bytes} bytes")
            yield bytes(buffer[start:end]).rstrip(b"\r").decode("utf-8", "replace")
            start = end + 1
        del buffer[:start]
        if len(buffer) > max_bytes:
            raise SourceError(f"the upstream sent an SSE line longer than {max_bytes} bytes")
    if buffer:
        yield bytes(buffer).rstrip(b"\r").decode("utf-8", "replace")
