"""The gateway against a hostile upstream and hostile clients (the "Gateway hardening" issue, one test per break).

The upstream is the scripted upstream of ``test/scripted_upstream.py`` playing an attacker: each :class:`Script`
is sent byte for byte (lone surrogates, giant chunks, keepalives forever, error events and fields carrying a
marker). A monitor at theta 0 / k 1 flags the first token it scores, so marker text that reaches a client there was
never scored; one at theta 1 never stops, so what it releases is the scored text itself. Every test bounds its
client's wait, so a gateway that hangs fails instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest

from serve.gateway.app import Gateway, _collect_watching, create_app
from serve.gateway.server import BackgroundServer
from serve.gateway.sources import Upstream
from test.scripted_upstream import Script, chat_chunk, data_line
from tests.serve.gateway.helpers import (load_monitor, local_gateway, proxy_gateway, read_sse, scripted_upstream,
                                         wait_until)

MARKER = "BOMBRECIPE"
DONE = data_line("[DONE]")
TIMEOUT = httpx.Timeout(15.0)


def _chat(prompt: str, stream: bool = True, **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": stream, **extra}


def _stream(server, body: dict) -> tuple[list[dict], str]:
    """The SSE payloads of a streamed request, and the raw body text."""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=TIMEOUT) as answer:
        raw = answer.read().decode("utf-8")
    return read_sse(raw.splitlines()), raw


def _content(events: list[dict]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


def _freed(gateway) -> bool:
    return gateway.scheduler.live_streams == 0 and gateway.scheduler.open_states() == 0


@pytest.fixture(scope="module")
def flags_all(tiny_scm_dir):
    return load_monitor(tiny_scm_dir, theta=0.0, k=1)


@pytest.fixture(scope="module")
def flags_none(tiny_scm_dir):
    return load_monitor(tiny_scm_dir, theta=1.0, k=1)


class Records(logging.Handler):
    """Collects the gateway logger's records (its own handler: the logger may not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        formatter = logging.Formatter()
        return "\n".join(formatter.format(r) for r in self.records)


@pytest.fixture
def gateway_log():
    logger = logging.getLogger("serve.gateway")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --------------------------------------------------------------------------------------------------- break 1

SURROGATES = {
    "split pair": ([chat_chunk("hi \ud83d"), chat_chunk("\ude00 there"), chat_chunk(" friend"),
                    chat_chunk(None, "stop"), DONE], "hi \U0001F600 there friend"),
    "lone low": ([chat_chunk("x \udc80 ok then"), chat_chunk(None, "stop"), DONE], "x \ufffd ok then"),
    "dangling high": ([chat_chunk("the end \ud83d"), chat_chunk(None, "stop"), DONE], "the end \ufffd"),
}


def test_break1_lone_surrogates_from_the_upstream_are_repaired_and_the_service_stays_up(flags_none):
    scripts = {name: Script(parts) for name, (parts, _) in SURROGATES.items()}
    with scripted_upstream(scripts=scripts) as (upstream, url):
        with proxy_gateway(flags_none, url) as (gateway, server):
            for name, (_, expected) in SURROGATES.items():
                events, _ = _stream(server, _chat(name))
                assert _content(events) == expected, name
                assert events[-1]["choices"][0]["finish_reason"] == "stop"
                tokens = "".join(t["text"] for e in events if e.get("scm") for t in e["scm"]["tokens"])
                assert tokens == expected
            # The service is whole: a plain request streams, /health is ok, no stream is left behind.
            events, _ = _stream(server, _chat("Tell me about the museum."))
            assert events[-1]["choices"][0]["finish_reason"] == "stop" and _content(events)
            assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
            wait_until(lambda: _freed(gateway), message="every stream freed")
            assert "scm_live_streams 0.0" in httpx.get(f"{server.url}/metrics").text


def test_break1_a_dead_monitor_worker_ends_live_streams_and_turns_health_unhealthy(flags_none):
    endless = Script([chat_chunk("")], repeat=[chat_chunk("word "), 0.02])
    with scripted_upstream(scripts={"endless": endless}) as (upstream, url):
        with proxy_gateway(flags_none, url) as (gateway, server):
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=_chat("endless"),
                              timeout=TIMEOUT) as answer:
                lines = answer.iter_lines()
                for line in lines:
                    if '"content":"word' in line:
                        break

                def broken_round():
                    raise RuntimeError("a bug in the scheduler")

                gateway.scheduler._take_ready = broken_round  # the worker's next round raises outside any stream
                events = read_sse(lines)
            assert events[-1]["error"]["type"] == "monitor_error"
            health = httpx.get(f"{server.url}/health")
            assert health.status_code == 503 and health.json()["status"] == "unhealthy"
            refused = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("endless"), timeout=TIMEOUT)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "monitor_unavailable"
            metrics = httpx.get(f"{server.url}/metrics").text
            assert "scm_monitor_worker_up 0.0" in metrics
            assert 'scm_stream_failures_total{cause="worker_down"} 1.0' in metrics
            wait_until(lambda: gateway.scheduler.live_streams == 0 and upstream.live == 0,
                       message="the stream's slot and upstream freed")


# --------------------------------------------------------------------------------------------------- break 2

ERROR_BODY = json.dumps({"error": {"message": f"{MARKER} step one mix the", "type": MARKER, "param": MARKER,
                                   "code": MARKER}})
LEAKS = {
    "error event": (Script([data_line({"error": {"message": f"{MARKER} step one mix the", "code": MARKER}})]),
                    502, "the upstream reported an error mid-stream"),
    "error string": (Script([data_line({"error": f"{MARKER} step one"})]), 502,
                     "the upstream reported an error mid-stream"),
    "malformed chunk": (Script([f"data: {{{MARKER} step one mix the\n\n"]), 502,
                        "the upstream sent a malformed chunk (not JSON)"),
    "http 400": (Script([ERROR_BODY], status=400), 400, "the upstream rejected the request (HTTP 400)"),
    "http 500": (Script([ERROR_BODY], status=500), 502, "the upstream failed (HTTP 500)"),
}


@pytest.mark.parametrize("case", list(LEAKS))
def test_break2_upstream_errors_reach_the_client_as_the_gateways_own_words(flags_all, case):
    script, status, message = LEAKS[case]
    with scripted_upstream(scripts={case: script}) as (_, url):
        with proxy_gateway(flags_all, url) as (gateway, server):
            refused = httpx.post(f"{server.url}/v1/chat/completions", json=_chat(case, stream=False),
                                 timeout=TIMEOUT)
            assert refused.status_code == status and MARKER not in refused.text
            assert refused.json()["error"]["message"] == message
            events, raw = _stream(server, _chat(case))
            assert MARKER not in raw
            error = events[-1]["error"] if events else json.loads(raw)["error"]
            assert error["message"] == message and error["param"] is None
            wait_until(lambda: _freed(gateway), message="freed")


def test_break2_usage_and_finish_reason_are_validated_values_not_relayed_text(flags_all, flags_none):
    bad_usage = {"prompt_tokens": f"{MARKER} step one", "completion_tokens": 1, "total_tokens": 2}
    good_usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "note": MARKER}
    scripts = {
        "bad usage": Script([chat_chunk(None, "stop", usage=bad_usage), DONE]),
        "good usage": Script([chat_chunk(None, "stop", usage=good_usage), DONE]),
        "bad finish": Script([chat_chunk("A calm answer about bread."), chat_chunk(None, f"{MARKER} step one"),
                              DONE]),
        "fields": Script([data_line({"id": MARKER, "model": MARKER, "choices": [{
            "index": 0, "logprobs": {"content": [{"token": MARKER}]},
            "delta": {"content": "A calm answer.", "reasoning_content": MARKER, "refusal": MARKER}}]}),
            chat_chunk(None, "stop"), DONE]),
    }
    with scripted_upstream(scripts=scripts) as (_, url):
        with proxy_gateway(flags_all, url) as (_, server):
            events, raw = _stream(server, _chat("bad usage", stream_options={"include_usage": True}))
            assert MARKER not in raw and events[-1]["usage"] is None
            response = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("bad usage", stream=False),
                                  timeout=TIMEOUT)
            assert MARKER not in response.text and "usage" not in response.json()
            events, raw = _stream(server, _chat("good usage", stream_options={"include_usage": True}))
            assert events[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
            assert MARKER not in raw
        with proxy_gateway(flags_none, url) as (_, server):
            events, raw = _stream(server, _chat("bad finish"))
            assert MARKER not in raw and _content(events) == "A calm answer about bread."
            assert events[-1]["choices"][0]["finish_reason"] == "stop"
            response = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("bad finish", stream=False),
                                  timeout=TIMEOUT).json()
            assert response["choices"][0]["finish_reason"] == "stop"
            events, raw = _stream(server, _chat("fields"))
            assert MARKER not in raw and _content(events) == "A calm answer."


def test_break2_the_stop_token_text_is_never_sent(flags_all):
    script = Script([chat_chunk(f"{MARKER} step one mix the"), chat_chunk(None, "stop"), DONE])
    with scripted_upstream(scripts={"stop": script}) as (_, url):
        with proxy_gateway(flags_all, url) as (_, server):
            events, raw = _stream(server, _chat("stop"))
            moderation = events[-1]["moderation"]
            assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
            assert moderation["response_token_index"] == 0 and moderation["chars_released"] == 0
            assert "token" not in moderation and isinstance(moderation["token_id"], int)
            assert _content(events) == "" and "BOMB" not in raw


# --------------------------------------------------------------------------------------------------- break 3

GIANT = "word " * 17_000  # 85 KB in one chunk: far beyond the tiny monitor's 512 tokens


def test_break3_a_giant_chunk_is_scored_as_far_as_the_monitor_reads_even_when_failing_open(flags_all, flags_none):
    script = Script([chat_chunk(GIANT), chat_chunk(None, "stop"), DONE])
    options = {"scheduler_options": {"on_error": "open"}}
    with scripted_upstream(scripts={"giant": script}) as (upstream, url):
        # A monitor that flags every token stops at the first one: nothing of the chunk is released.
        with proxy_gateway(flags_all, url, **options) as (gateway, server):
            events, raw = _stream(server, _chat("giant"))
            assert raw.rstrip().endswith("data: [DONE]") and _content(events) == ""
            assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
            assert "unmonitored" not in events[-1]["moderation"]
            response = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("giant", stream=False),
                                  timeout=TIMEOUT).json()
            assert response["choices"][0]["message"]["content"] == ""
            assert response["choices"][0]["finish_reason"] == "content_filter"
            wait_until(lambda: _freed(gateway) and upstream.live == 0, message="freed")
        # A monitor that flags nothing: the scored prefix is released, the rest withheld, finish_reason "length".
        with proxy_gateway(flags_none, url, **options) as (gateway, server):
            events, raw = _stream(server, _chat("giant"))
            content = _content(events)
            assert raw.rstrip().endswith("data: [DONE]") and "max_position_embeddings" not in raw
            assert 0 < len(content) < 512 * 5 and GIANT.startswith(content)
            tokens = [t for e in events if e.get("scm") for t in e["scm"]["tokens"]]
            assert "".join(t["text"] for t in tokens) == content
            final = events[-1]
            assert final["choices"][0]["finish_reason"] == "length"
            moderation = final["moderation"]
            assert moderation["truncated"] is True and "unmonitored" not in moderation
            assert moderation["chars_released"] == len(content)
            assert moderation["chars_withheld"] == len(GIANT) - len(content)
            assert moderation["tokens_scored"] >= len(tokens) > 0
            response = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("giant", stream=False),
                                  timeout=TIMEOUT)
            assert response.status_code == 200 and "max_position_embeddings" not in response.text
            assert response.json()["choices"][0]["message"]["content"] == content
            assert response.json()["choices"][0]["finish_reason"] == "length"
            wait_until(lambda: _freed(gateway) and upstream.live == 0, message="freed")
            assert "scm_truncated_total 2.0" in httpx.get(f"{server.url}/metrics").text


def test_break3_a_client_leaving_while_its_response_is_collected_gets_499_not_an_error():
    """The case of break 3: the session was already at its end (source done, so closing it never yields) when the
    client left; the cancelled collect task was read before its cancellation landed (InvalidStateError)."""

    class Session:
        closed: list[str] = []

        async def collect(self):
            await asyncio.Event().wait()  # a response that never completes

        async def close(self, outcome: str) -> None:
            self.closed.append(outcome)

    class Request:
        async def receive(self):
            return {"type": "http.disconnect"}

    response = asyncio.run(_collect_watching(Request(), Session()))
    assert response.status_code == 499 and Session.closed == ["disconnected"]


def test_break3_a_client_leaving_a_non_streaming_request_frees_it_without_an_error(flags_none, gateway_log):
    pings = Script([chat_chunk("")], repeat=[": ping\n\n", 0.05])
    with scripted_upstream(scripts={"pings": pings}) as (upstream, url):
        with proxy_gateway(flags_none, url) as (gateway, server):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{server.url}/v1/chat/completions", json=_chat("pings", stream=False), timeout=0.5)
            wait_until(lambda: _freed(gateway) and upstream.live == 0, message="freed after the client left")
            time.sleep(0.2)
    assert "InvalidStateError" not in gateway_log.text() and "unexpected error" not in gateway_log.text()


# --------------------------------------------------------------------------------------------------- break 4

STALLS = {
    "keepalives": Script([chat_chunk("")], repeat=[": ping\n\n", 0.05]),
    # Text keeps coming, but one endless word never completes a token the monitor can score.
    "endless word": Script([chat_chunk("")], repeat=[chat_chunk("a"), 0.05]),
}


@pytest.mark.parametrize("case", list(STALLS))
def test_break4_a_stream_without_scored_progress_is_timed_out_and_frees_its_slot(flags_none, case):
    with scripted_upstream(scripts={case: STALLS[case]}) as (upstream, url):
        with proxy_gateway(flags_none, url, timeout=0.3, stream_idle_timeout=0.8,
                           scheduler_options={"max_streams": 1}) as (gateway, server):
            began = time.monotonic()
            events, _ = _stream(server, _chat(case))
            assert 0.7 < time.monotonic() - began < 5
            error = events[-1]["error"]
            assert error["type"] == "stream_timeout" and "no scored text for 0.8 s" in error["message"]
            assert _content(events) == ""
            wait_until(lambda: _freed(gateway) and upstream.live == 0, message="slot and upstream freed")
            # The one slot is free again.
            answer = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("Tell me about the museum.",
                                                                                stream=False), timeout=TIMEOUT)
            assert answer.status_code == 200
            assert 'scm_stream_failures_total{cause="idle_timeout"} 1.0' in httpx.get(f"{server.url}/metrics").text


def test_break4_a_stream_longer_than_the_time_limit_ends_with_an_error(flags_none):
    endless = Script([chat_chunk("")], repeat=[chat_chunk("word "), 0.02])
    with scripted_upstream(scripts={"endless": endless}) as (upstream, url):
        with proxy_gateway(flags_none, url, max_stream_seconds=1.0) as (gateway, server):
            began = time.monotonic()
            events, _ = _stream(server, _chat("endless"))
            assert 0.9 < time.monotonic() - began < 5
            assert events[-1]["error"]["type"] == "stream_timeout"
            assert "longer than the gateway's limit of 1 s" in events[-1]["error"]["message"]
            content = _content(events)
            assert content.startswith("word word") and set(content.split()) == {"word"}
            wait_until(lambda: _freed(gateway) and upstream.live == 0, message="freed")


# --------------------------------------------------------------------------------------------------- break 5

def test_break5_a_body_over_the_limit_gets_413_before_it_is_read(flags_none):
    with scripted_upstream() as (upstream, url):
        with proxy_gateway(flags_none, url, max_request_bytes=65536) as (gateway, server):
            big = json.dumps(_chat("x " * 600_000)).encode()
            for path in ("/v1/chat/completions", "/v1/completions", "/v1/moderations"):
                declared = httpx.post(f"{server.url}{path}", content=big, timeout=TIMEOUT,
                                      headers={"Content-Type": "application/json"})
                assert declared.status_code == 413, path
                error = declared.json()["error"]
                assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
                assert "65536 bytes" in error["message"]

            def chunked():
                for at in range(0, len(big), 16384):
                    yield big[at: at + 16384]

            streamed = httpx.post(f"{server.url}/v1/chat/completions", content=chunked(), timeout=TIMEOUT)
            assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"
            small = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("Hello there.", stream=False),
                               timeout=TIMEOUT)
            assert small.status_code == 200 and upstream.started == 1


def test_break5_tokenising_a_prompt_does_not_block_the_event_loop(flags_none, monkeypatch):
    entered, loop_thread = threading.Event(), {}
    original = flags_none.encode_prompt

    def slow_encode(prompt):
        loop_thread["encode"] = threading.current_thread().name
        entered.set()
        time.sleep(2.0)  # a tokenisation that takes seconds (a prompt of megabytes)
        return original(prompt)

    monkeypatch.setattr(flags_none, "encode_prompt", slow_encode)
    with scripted_upstream() as (_, url):
        with proxy_gateway(flags_none, url) as (_, server):
            worker = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/chat/completions",),
                                      kwargs={"json": _chat("Hello there.", stream=False), "timeout": TIMEOUT})
            worker.start()
            assert entered.wait(10)
            began = time.monotonic()
            assert httpx.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200
            assert time.monotonic() - began < 1.0  # answered while the prompt is being tokenised
            worker.join(15)
    assert loop_thread["encode"] != server.thread.name


# --------------------------------------------------------------------------------------------------- break 6

def test_break6_upstream_credentials_and_checkpoint_paths_are_never_shown(flags_all, tiny_scm_dir, gateway_log):
    scripts = {"fails": Script([ERROR_BODY], status=500)}
    with scripted_upstream(scripts=scripts) as (upstream, url):
        secret_url = url.replace("http://", "http://admin:PASSWORD@") + "?api-key=QUERYSECRET"
        gateway = Gateway(flags_all, upstream=Upstream(secret_url, timeout=5),
                          info={"model_path": str(tiny_scm_dir.resolve())})
        try:
            with BackgroundServer(create_app(gateway)) as server:
                health = httpx.get(f"{server.url}/health").text
                events, raw = _stream(server, _chat("Hello there."))
                failed = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("fails"), timeout=TIMEOUT)
        finally:
            gateway.scheduler.stop()
        with proxy_gateway(flags_all, "http://admin:PASSWORD@127.0.0.1:9/v1") as (_, server):
            unreachable = httpx.post(f"{server.url}/v1/chat/completions", json=_chat("x"), timeout=TIMEOUT)
        # The upstream still gets the credentials, as Basic auth.
        assert upstream.headers[0]["authorization"] == "Basic YWRtaW46UEFTU1dPUkQ="
    shown = "\n".join([health, raw, failed.text, unreachable.text, gateway_log.text(),
                       json.dumps(gateway.describe())])
    for secret in ("PASSWORD", "admin", "QUERYSECRET", str(tiny_scm_dir.resolve().parent)):
        assert secret not in shown, secret
    assert json.loads(health)["upstream"] == url.rsplit("/", 1)[0]  # scheme://host:port
    assert json.loads(health)["model_path"] == tiny_scm_dir.name
    assert events[-1]["moderation"]["output"]["model"] == f"scm:{tiny_scm_dir.name}"
    assert failed.status_code == 502 and unreachable.status_code == 502
    assert unreachable.json()["error"]["message"] == "the upstream cannot be reached"


def test_break6_the_cli_gateway_describes_itself_without_secrets(tiny_scm_dir):
    from serve.gateway.config import GatewayArguments
    from serve.gateway.server import build_gateway

    gateway = build_gateway(GatewayArguments(model_path=str(tiny_scm_dir.resolve()), device="cpu",
                                             upstream="https://admin:PASSWORD@upstream.example:8443/v1"))
    try:
        described = json.dumps(gateway.describe())  # also the start-up log line
    finally:
        gateway.scheduler.stop()
    assert "PASSWORD" not in described and str(tiny_scm_dir.resolve().parent) not in described
    assert gateway.describe()["upstream"] == "https://upstream.example:8443"


# --------------------------------------------------------------------------------------------------- break 7

DEEP = b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NESTED = b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 40 + b"]" * 40 + b"}"
BAD_INPUT = [
    ("/v1/chat/completions", DEEP, "invalid_json", None),
    ("/v1/chat/completions", NESTED, "invalid_json", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi \\ud83d"}]}', "invalid_value",
     "messages.0.content"),
    ("/v1/chat/completions", b'{"messages": [{"role": "system", "content": "\\udc80"}, {"role": "user", '
                             b'"content": "hi"}]}', "invalid_value", "messages.0.content"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "user": "\\ud800x"}',
     "invalid_value", "user"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "\\udc80": 1}', "invalid_value",
     "\\udc80"),  # in a key: named escaped, so that the error body is valid JSON
    ("/v1/completions", b'{"prompt": "a \\udfff b"}', "invalid_value", "prompt"),
    ("/v1/moderations", b'{"input": ["fine", "x \\ud83d"]}', "invalid_value", "input.1"),
    ("/v1/moderations", b'{"input": "ok", "prompt": "\\ud83d"}', "invalid_value", "prompt"),
]


@pytest.mark.parametrize("path, body, code, param", BAD_INPUT)
def test_break7_malformed_requests_get_an_openai_style_400_in_proxy_mode(flags_none, path, body, code, param):
    with scripted_upstream() as (upstream, url):
        with proxy_gateway(flags_none, url) as (gateway, server):
            answer = httpx.post(f"{server.url}{path}", content=body, timeout=TIMEOUT,
                                headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
            assert upstream.started == 0 and gateway.scheduler.live_streams == 0
            assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


# --------------------------------------------------------------------------------------------------- break 8

def test_break8_stop_lists_are_bounded_like_openais(flags_none, tiny_generator):
    chat = {"messages": [{"role": "user", "content": "Hello there."}], "max_tokens": 3}
    with local_gateway(flags_none, tiny_generator) as (gateway, server):
        for stop, message in ((["s"] * 1000, "1000 stop sequences; send at most 4"),
                              (["a", "b", "c", "d", "e"], "5 stop sequences; send at most 4"),
                              (["x" * 129], "must be 1 to 128 characters, got 129"), ([""], "got 0")):
            began = time.monotonic()
            refused = httpx.post(f"{server.url}/v1/chat/completions", json={**chat, "stop": stop}, timeout=TIMEOUT)
            assert refused.status_code == 400 and time.monotonic() - began < 5
            assert refused.json()["error"]["param"] == "stop" and message in refused.json()["error"]["message"]
        fine = httpx.post(f"{server.url}/v1/chat/completions", json={**chat, "stop": ["a", "b", "c", "x" * 128]},
                          timeout=TIMEOUT)
        assert fine.status_code == 200
        wait_until(lambda: _freed(gateway), message="freed")


# --------------------------------------------------------------------------------------------------- also seen

def test_the_api_key_scheme_is_case_insensitive_and_head_health_answers(flags_none):
    with scripted_upstream() as (_, url):
        with proxy_gateway(flags_none, url, api_key="sesame") as (_, server):
            models = f"{server.url}/v1/models"
            for header in ("Bearer sesame", "bearer sesame", "BEARER sesame", "Bearer  sesame"):
                assert httpx.get(models, headers={"Authorization": header}).status_code == 200, header
            for header in ("Bearer wrong", "Basic sesame", "Bearersesame", "Bearer sesame extra", "sesame",
                           "Bearer sesam"):
                assert httpx.get(models, headers={"Authorization": header}).status_code == 401, header
            twice = httpx.get(models, headers=[("Authorization", "Bearer wrong"), ("Authorization", "Bearer sesame")])
            assert twice.status_code == 401
            assert httpx.head(f"{server.url}/health").status_code == 200
            assert httpx.head(f"{server.url}/").status_code == 200
