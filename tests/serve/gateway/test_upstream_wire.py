"""What an upstream may say (serve/gateway/upstream_wire.py): text deltas as valid Unicode, finish reasons from
OpenAI's set, usage as three integers, fixed error messages, bounded lines; nothing else survives."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve.gateway.upstream_wire import (ChunkParser, SourceError, SurrogateRepair, bounded_lines, clean_finish_reason,
                                         clean_usage, status_error)

MARKER = "BOMBRECIPE"


def _line(payload) -> str:
    return "data: " + (payload if isinstance(payload, str) else json.dumps(payload))


@pytest.mark.parametrize("deltas, expected", [
    (["hi \ud83d", "\ude00 there"], ["hi ", "\U0001F600 there"]),  # a pair split across deltas is joined
    (["x \udc80 ok"], ["x \ufffd ok"]),  # a lone low half
    (["a\ud83db"], ["a\ufffdb"]),  # a lone high half inside a delta
    (["end \ud83d"], ["end ", "\ufffd"]),  # a high half that never gets its pair (flushed at the end)
    (["\ud83d", "\ud83d", "\ude00"], ["", "\ufffd", "\U0001F600"]),
    (["plain", "caf\u00e9 \U0001F600"], ["plain", "caf\u00e9 \U0001F600"]),
])
def test_surrogate_repair_joins_split_pairs_and_replaces_lone_halves(deltas, expected):
    repair = SurrogateRepair()
    out = [repair.add(delta) for delta in deltas]
    tail = repair.flush()
    if tail:
        out.append(tail)
    assert out == expected
    assert all(not any("\ud800" <= c <= "\udfff" for c in text) for text in out)


def test_parser_reads_content_only_and_drops_every_other_field():
    parser = ChunkParser("chat")
    chunk = {"id": MARKER, "model": MARKER, "system_fingerprint": MARKER,
             "choices": [{"index": 0, "logprobs": {"content": [{"token": MARKER}]},
                          "delta": {"role": MARKER, "content": "Hello", "reasoning_content": MARKER,
                                    "refusal": MARKER, "audio": {"data": MARKER}},
                          "finish_reason": None}]}
    assert parser.line(_line(chunk)) == ["Hello"]
    for ignored in (": " + MARKER, "event: " + MARKER, "id: " + MARKER, "retry: 5", ""):
        assert parser.line(ignored) == []
    assert parser.line(_line({"choices": [{"index": 0, "delta": {}, "finish_reason": MARKER}]})) == []
    assert parser.finish_reason == "stop"
    assert parser.line("data: [DONE]") == [] and parser.done
    assert parser.line(_line({"choices": [{"delta": {"content": MARKER}}]})) == []  # text after [DONE]
    completions = ChunkParser("text")
    assert completions.line(_line({"choices": [{"text": "plain", "finish_reason": "length"}]})) == ["plain"]
    assert completions.finish_reason == "length"


@pytest.mark.parametrize("reason, expected", [
    (None, None), ("stop", "stop"), ("length", "length"), ("content_filter", "content_filter"),
    ("tool_calls", "tool_calls"), ("abort", "stop"), (MARKER + " step one", "stop"), (7, "stop"), ({}, "stop"),
])
def test_finish_reasons_come_from_openais_set(reason, expected):
    assert clean_finish_reason(reason) == expected


@pytest.mark.parametrize("usage, expected", [
    ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "note": MARKER},
     {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}),
    ({"prompt_tokens": 5, "completion_tokens": 7}, {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}),
    ({"prompt_tokens": MARKER, "completion_tokens": 7, "total_tokens": 12}, None),
    ({"prompt_tokens": 5, "completion_tokens": -1, "total_tokens": 4}, None),
    ({"prompt_tokens": True, "completion_tokens": 7, "total_tokens": 8}, None),
    ({"prompt_tokens": 5.5, "completion_tokens": 7, "total_tokens": 12}, None),
    ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": "12"}, None),
    ({"prompt_tokens": 10**30, "completion_tokens": 7, "total_tokens": 12}, None),
    ([5, 7, 12], None), (MARKER, None),
])
def test_usage_is_three_non_negative_integers_or_nothing(usage, expected):
    assert clean_usage(usage) == expected


@pytest.mark.parametrize("data, match", [
    ("{" + MARKER, "malformed chunk \\(not JSON\\)"),
    ("[" * 100_000 + "]" * 100_000, "malformed chunk \\(not JSON\\)"),
    (json.dumps([MARKER]), "not a JSON object"),
    (json.dumps({"error": {"message": MARKER, "type": MARKER, "code": MARKER}}), "reported an error mid-stream"),
    (json.dumps({"error": MARKER}), "reported an error mid-stream"),
    (json.dumps({"choices": MARKER}), "no choices list"),
    (json.dumps({"choices": [MARKER]}), "a choice is not an object"),
    (json.dumps({"choices": [{"delta": MARKER}]}), "a delta is not an object"),
    (json.dumps({"choices": [{"delta": {"content": [MARKER]}}]}), "non-text content"),
    (json.dumps({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": MARKER}}]}}]}), "tool call"),
    (json.dumps({"choices": [{"delta": {"function_call": {"arguments": MARKER}}}]}), "tool call"),
])
def test_a_bad_chunk_ends_the_stream_with_a_message_of_the_gateways_own(data, match):
    with pytest.raises(SourceError, match=match) as caught:
        ChunkParser("chat").line("data: " + data)
    assert MARKER not in str(caught.value)


def test_an_error_status_keeps_status_and_safe_fields_only():
    body = json.dumps({"error": {"message": MARKER, "type": MARKER, "param": MARKER, "code": MARKER}}).encode()
    error = status_error(400, body, ["messages", "model"])
    assert (error.status, error.type, error.param, error.code) == (400, "invalid_request_error", None,
                                                                   "upstream_http_400")
    assert MARKER not in json.dumps(error.body())
    named = status_error(400, json.dumps({"error": {"param": "messages", "code": "context_length_exceeded"}}).encode(),
                         ["messages"])
    assert (named.param, named.code) == ("messages", "context_length_exceeded")
    assert named.message == "the upstream rejected the request (HTTP 400): check the field 'messages'"
    assert status_error(429, b"", []).type == "rate_limit_error"
    for status in (401, 403, 500, 503, 302):
        failed = status_error(status, body, [])
        assert (failed.status, failed.message) == (502, f"the upstream failed (HTTP {status})")


def _lines(chunks: list[bytes], max_bytes: int) -> list[str]:
    async def source():
        for chunk in chunks:
            yield chunk

    async def collect():
        return [line async for line in bounded_lines(source(), max_bytes)]

    return asyncio.run(collect())


def test_lines_are_split_across_reads_decoded_leniently_and_bounded():
    assert _lines([b"data: a\r", b"\ndata: \xf0\x9f", b"\x98\x80\n\n", b"tail"], 64) == [
        "data: a", "data: \U0001F600", "", "tail"]
    assert _lines([b"bad \xff byte\n"], 64) == ["bad \ufffd byte"]
    with pytest.raises(SourceError, match="longer than 64 bytes"):
        _lines([b"x" * 40, b"x" * 40], 64)  # no newline ever
    with pytest.raises(SourceError, match="longer than 64 bytes"):
        _lines([b"x" * 100 + b"\n"], 64)
