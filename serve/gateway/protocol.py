"""The OpenAI wire format the gateway speaks: request validation, error bodies, chunks and responses.

Requests are validated strictly where the gateway reads a field (a ``max_tokens`` of ``"ten"`` is a 400, not a
silent conversion) and loosely elsewhere: unknown fields are allowed and, in proxy mode, forwarded upstream, so
that newer OpenAI-compatible clients keep working.

Extensions (ignored by OpenAI clients, which allow extra fields):

- every content chunk carries ``scm: {"tokens": [{"text", "score"}, ...]}``, the monitored tokens behind the
  released text with their harmful scores (the chat page colours text with them);
- the final chunk (and a non-streaming response) carries ``moderation``: whether the monitor stopped the stream,
  where (response token index, token, score), why (rule, theta, k, count) and how much was withheld; with a
  category head also the category named at the stop and OpenAI's ``categories``/``category_scores``/
  ``category_applied_input_types`` (``serve/category_policy.py``);
- with ``--annotations azure``, each choice also carries Azure's ``content_filter_results`` (and, in a streamed
  chunk, ``content_filter_offsets``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve.gateway.config import CHAT_PROMPTS


class GatewayError(Exception):
    """An error answered with an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status: HTTP status.
        message: what went wrong and how to fix it.
        type: OpenAI error type (``invalid_request_error``, ``rate_limit_error``, ``upstream_error`` ...).
        param: the request field at fault, if any.
        code: a short machine-readable code.
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI sends it (also the payload of an SSE error event)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------------- requests

class _Strict(BaseModel):
    # strict: no "10" -> 10 coercion; extra: unknown fields are kept (and forwarded upstream in proxy mode).
    model_config = ConfigDict(strict=True, extra="allow")


class ContentPart(_Strict):
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text (text parts joined by newlines; other parts such as images are skipped)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if part.type == "text" and part.text)


class StreamOptions(_Strict):
    include_usage: bool = False


class _GenerationRequest(_Strict):
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"{len(stops)} stop sequences; send at most {MAX_STOP_SEQUENCES}")
        for stop in stops:
            if not stop or len(stop) > MAX_STOP_CHARS:
                raise ValueError(f"a stop sequence must be 1 to {MAX_STOP_CHARS} characters, got {len(stop)}")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("the moderated gateway returns one choice per request; send n=1 (or several requests)")
        return value

    def token_budget(self) -> int | None:
        """The response length limit the client asked for (``max_tokens`` or ``max_completion_tokens``)."""
        return self.max_tokens


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: Any = None
    functions: Any = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise ValueError("tool and function calls are not monitored by the gateway, so they are refused; send "
                             "the request without tools")
        return value

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("the prompt is empty")
        return value


class ModerationRequest(_Strict):
    input: str | list[str]
    model: str | None = None
    prompt: str = Field(default="", description="extension: the prompt the text answers (default: none)")
    return_token_scores: bool = Field(default=False, description="extension: per-token scores in the result")

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input is an empty list; send a string or a list of strings")
        return value


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "literal"}
# Request bodies nest a few levels (messages, content parts); deeper is an attack on the parser, or on whatever
# re-encodes the body (the upstream request): refused before anything recurses into it.
MAX_JSON_DEPTH = 32
# OpenAI's limit on stop sequences; the length bound keeps the local generator's stop-string tables small
# (transformers builds them over the whole vocabulary for each string: 1,000 strings took 40 s).
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 128
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a JSON request body and check what every later step relies on.

    Raises:
        GatewayError: 400 for malformed JSON, a body that is not an object, nesting deeper than
            :data:`MAX_JSON_DEPTH`, or a string (value or key) holding a lone UTF-16 surrogate, which no tokenizer
            can encode (``"\\ud83d"`` alone is valid JSON but not Unicode text). The message names the field.
    """
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GatewayError(400, f"the request body is not valid JSON ({err}); send a JSON object",
                           code="invalid_json") from None
    except RecursionError:
        raise GatewayError(400, f"the request body is nested too deeply; at most {MAX_JSON_DEPTH} levels",
                           code="invalid_json") from None
    if not isinstance(payload, dict):
        raise GatewayError(400, f"the request body must be a JSON object, got {type(payload).__name__}",
                           code="invalid_json")
    _check_tree(payload)
    return payload


def _check_tree(payload: dict[str, Any]) -> None:
    """Depth and lone surrogates, iteratively (a recursive walk would itself overflow on a deep body)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(payload, ())]
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH and isinstance(value, (dict, list)):  # the body itself is level 1
            raise GatewayError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep",
                               code="invalid_json")
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path + (key,))
                stack.append((item, path + (key,)))
        elif isinstance(value, list):
            stack.extend((item, path + (str(number),)) for number, item in enumerate(value))


def _check_text(text: str, path: tuple[str, ...]) -> None:
    if text.isascii():
        return
    found = _LONE_SURROGATE.search(text)
    if found is not None:
        # The path may hold the bad key itself: escaped, so that the error body is valid UTF-8 JSON.
        param = ".".join(path).encode("utf-8", "backslashreplace").decode("utf-8") or None
        raise GatewayError(400, f"{param or 'the body'} holds a lone UTF-16 surrogate (U+{ord(found.group()):04X}) "
                                f"at character {found.start()}, which is not valid Unicode text; send the whole "
                                f"character (both halves of the pair) or valid UTF-8", param=param,
                           code="invalid_value")


def validate_request(model: type[BaseModel], payload: dict[str, Any]) -> Any:
    """Validate a decoded body (:func:`parse_body`) against a request model.

    Raises:
        GatewayError: 400 for a field of the wrong type or value, naming the field.
    """
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        # Union members appear in the location as type names ("content.str"): keep the field path only.
        path = [str(part) for part in first["loc"] if str(part) not in _TYPE_NAMES and "[" not in str(part)]
        param = ".".join(path) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = f"missing required field {param!r}"
        elif param:
            message = f"{param}: {message}"
        raise GatewayError(400, message, param=param, code="invalid_value") from None


def parse_request(model: type[BaseModel], raw: bytes) -> Any:
    """Parse and validate a JSON request body (:func:`parse_body`, then :func:`validate_request`).

    Raises:
        GatewayError: 400, as those two say.
    """
    return validate_request(model, parse_body(raw))


def chat_prompt_text(messages: list[ChatMessage], policy: str) -> str:
    """The text the monitor reads as the prompt of a chat request (see docs/ARCHITECTURE.md).

    Args:
        messages: the request's messages.
        policy: ``last-user``: the content of the last user message, which is what the monitor was trained on
            (FineHarm pairs a single user request with its response); ``conversation``: every message as
            ``role: content`` lines, for deployments whose monitor was trained on whole conversations.

    Raises:
        GatewayError: 400 when there is no user message, or its text is empty.
    """
    if policy not in CHAT_PROMPTS:
        raise ValueError(f"unknown chat prompt policy {policy!r}; use one of {CHAT_PROMPTS}")
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise GatewayError(400, "messages hold no user message; the monitor needs the user's request",
                           param="messages", code="no_user_message")
    if not users[-1].text().strip():
        raise GatewayError(400, "the last user message is empty", param="messages", code="empty_message")
    if policy == "last-user":
        return users[-1].text()
    return "\n".join(f"{m.role}: {m.text()}" for m in messages if m.text())


# --------------------------------------------------------------------------------------------------- responses

def new_id(prefix: str) -> str:
    """An OpenAI-style object id (``chatcmpl-...``, ``cmpl-...``, ``modr-...``)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ResponseWriter:
    """Builds the chunks and the final response of one chat or text completion.

    Args:
        kind: ``chat`` or ``text`` (``/v1/chat/completions`` or ``/v1/completions``).
        model: the model name to report.
    """

    def __init__(self, kind: str, model: str) -> None:
        self.kind, self.model = kind, model
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def role_chunk(self) -> dict[str, Any]:
        """The first chat chunk (the assistant role, no content); None for text completions."""
        return self._envelope([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}])

    def content_chunk(self, text: str, tokens: list[dict[str, Any]],
                      choice_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A chunk with released text and its monitored tokens (extension field ``scm``); ``choice_extra``:
        fields added to the choice (Azure's ``content_filter_results``/``content_filter_offsets``)."""
        if self.kind == "chat":
            choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        return self._envelope([{**choice, **(choice_extra or {})}], scm={"tokens": tokens})

    def final_chunk(self, finish_reason: str, moderation: dict[str, Any],
                    choice_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The last chunk: the finish reason and the ``moderation`` object."""
        if self.kind == "chat":
            choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        return self._envelope([{**choice, **(choice_extra or {})}], moderation=moderation)

    def usage_chunk(self, usage: dict[str, int] | None) -> dict[str, Any]:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the usage (null when unknown: an
        upstream that sent none, or none that validated)."""
        return self._envelope([], usage=usage)

    def response(self, text: str, finish_reason: str, moderation: dict[str, Any],
                 usage: dict[str, int] | None, choice_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The non-streaming response (``choice_extra``: fields added to the choice)."""
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [{**choice, **(choice_extra or {})}], "moderation": moderation}
        if usage is not None:
            body["usage"] = usage
        return body


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or ``data: [DONE]``) and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode("utf-8")
