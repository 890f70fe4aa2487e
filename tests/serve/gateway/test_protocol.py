"""Request validation, error bodies and the chat prompt policy (serve/gateway/protocol.py)."""

from __future__ import annotations

import json
import re

import pytest

from serve.gateway.protocol import (MAX_JSON_DEPTH, ChatCompletionRequest, ChatMessage, CompletionRequest,
                                    GatewayError, ModerationRequest, chat_prompt_text, parse_body, parse_request)

CONVERSATION = [
    ChatMessage(role="system", content="You are terse."),
    ChatMessage(role="user", content="first question"),
    ChatMessage(role="assistant", content="first answer"),
    ChatMessage(role="user", content=[{"type": "text", "text": "second"}, {"type": "image_url"},
                                      {"type": "text", "text": "question"}]),
]


def test_last_user_policy_reads_the_last_user_message_text_parts_joined():
    assert chat_prompt_text(CONVERSATION, "last-user") == "second\nquestion"


def test_conversation_policy_renders_every_message_as_role_lines():
    assert chat_prompt_text(CONVERSATION, "conversation") == (
        "system: You are terse.\nuser: first question\nassistant: first answer\nuser: second\nquestion")


@pytest.mark.parametrize("messages, code", [
    ([ChatMessage(role="system", content="only a system prompt")], "no_user_message"),
    ([ChatMessage(role="user", content="  ")], "empty_message"),
])
def test_chat_prompt_without_usable_user_message_is_a_400(messages, code):
    with pytest.raises(GatewayError) as caught:
        chat_prompt_text(messages, "last-user")
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, code, "messages")


@pytest.mark.parametrize("raw, param, match", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b'{"messages": []}', "messages", "at least 1 item"),
    (b'{"model": "m"}', "messages", "missing required field 'messages'"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}', "max_tokens", "valid integer"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens", "greater than or equal"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream", "valid boolean"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}', "temperature", "less than or equal"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role", "Input should be"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages.0.content", None),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "n", "one choice per request"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}', "tools",
     "not monitored"),
])
def test_bad_chat_requests_are_400_with_the_field_named(raw, param, match):
    with pytest.raises(GatewayError) as caught:
        parse_request(ChatCompletionRequest, raw)
    error = caught.value
    assert error.status == 400 and error.param == param
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    if match:
        assert match in body["message"]


def test_unknown_fields_are_kept_for_the_upstream_and_ints_pass_as_floats():
    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 1, "frequency_penalty": 0.5,
                      "max_completion_tokens": 7}).encode()
    request = parse_request(ChatCompletionRequest, raw)
    assert request.temperature == 1.0 and request.model_extra == {"frequency_penalty": 0.5}
    assert request.token_budget() == 7


def test_completion_and_moderation_requests_reject_empty_input():
    with pytest.raises(GatewayError, match="prompt is empty"):
        parse_request(CompletionRequest, b'{"prompt": ""}')
    with pytest.raises(GatewayError, match="empty list"):
        parse_request(ModerationRequest, b'{"input": []}')
    assert parse_request(ModerationRequest, b'{"input": "text"}').input == "text"


@pytest.mark.parametrize("raw, param, match", [
    (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
    (b'{"x": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}", None, f"more than {MAX_JSON_DEPTH} levels"),
    (b'{"messages": [{"role": "user", "content": "hi \\ud83d"}]}', "messages.0.content",
     "messages.0.content holds a lone UTF-16 surrogate (U+D83D) at character 3"),
    (b'{"a": {"\\udc80": 1}}', "a.\\udc80", "a.\\udc80 holds a lone UTF-16 surrogate (U+DC80) at character 0"),
    (b'{"input": ["ok", "\\udfff"]}', "input.1", "input.1 holds a lone UTF-16 surrogate (U+DFFF)"),
])
def test_bodies_too_deep_or_with_lone_surrogates_are_400_naming_the_field(raw, param, match):
    with pytest.raises(GatewayError, match=re.escape(match)) as caught:
        parse_body(raw)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_bodies_within_the_limits_parse_and_surrogate_pairs_are_fine():
    nested = b'{"x": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert "x" in parse_body(nested)
    assert parse_body(b'{"text": "\\ud83d\\ude00"}') == {"text": "\U0001F600"}


@pytest.mark.parametrize("stop, match", [
    (["a"] * 5, "5 stop sequences; send at most 4"),
    (["a"] * 1000, "1000 stop sequences; send at most 4"),
    ("x" * 129, "1 to 128 characters, got 129"),
    (["ok", ""], "1 to 128 characters, got 0"),
])
def test_stop_lists_are_bounded(stop, match):
    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stop": stop}).encode()
    with pytest.raises(GatewayError, match=match) as caught:
        parse_request(ChatCompletionRequest, raw)
    assert caught.value.param == "stop"
    fine = {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "x" * 128]}
    assert parse_request(ChatCompletionRequest, json.dumps(fine).encode()).stop == fine["stop"]
