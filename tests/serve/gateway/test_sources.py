"""Proxy mode (serve/gateway/sources.py): the gateway in front of an OpenAI-compatible upstream.

The upstream is a second instance of the project's own server (local mode, a monitor that never stops) or the
scripted upstream of ``test/scripted_upstream.py``, which streams canned text and injects faults. Checks: the client
receives the scored prefix of the upstream's text and a content_filter stop; upstream errors, timeouts, malformed
chunks and dropped connections end the client's stream with an error event, release nothing unscored and free every
state; a client disconnect closes the upstream connection; a full gateway answers 429; shutdown ends live streams.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.serve.gateway.helpers import (expected_for_text, load_monitor, local_gateway, proxy_gateway, read_sse,
                                         scripted_upstream, theta_between, wait_until)
from test.scripted_upstream import text_for
from utils.decision_rules import DelayK

PROMPT = "Tell me about the museum."
CHAT = {"messages": [{"role": "user", "content": PROMPT}], "stream": True}


@pytest.fixture(scope="module")
def monitor(tiny_scm_dir):
    return load_monitor(tiny_scm_dir, theta=1.0, k=1)


def _operate(monitor, theta: float, k: int = 1) -> None:
    monitor.theta, monitor.rule = theta, DelayK(k)


def _freed(gateway) -> bool:
    return gateway.scheduler.live_streams == 0 and gateway.scheduler.open_states() == 0


def test_proxy_in_front_of_a_second_gateway_streams_the_scored_prefix_and_cancels_upstream(monitor, tiny_scm_dir,
                                                                                          tiny_generator):
    upstream_monitor = load_monitor(tiny_scm_dir, theta=1.0, k=1)  # the upstream instance never stops
    with local_gateway(upstream_monitor, tiny_generator) as (upstream, upstream_server):
        request = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 60,
                   "temperature": 0}
        full = httpx.post(f"{upstream_server.url}/v1/chat/completions", json=request).json()
        text = full["choices"][0]["message"]["content"]
        _operate(monitor, 0.5)
        scores = expected_for_text(monitor, PROMPT, text).scores
        _operate(monitor, theta_between(scores[:20], 1))
        expected = expected_for_text(monitor, PROMPT, text)
        assert expected.stop_index is not None and len(expected.text) < len(text)
        with proxy_gateway(monitor, f"{upstream_server.url}/v1") as (gateway, server):
            with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused") as client:
                chunks = list(client.chat.completions.create(stream=True, **request))
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert content == expected.text
            scored = [t for c in chunks for t in (c.model_extra.get("scm") or {}).get("tokens", [])]
            assert "".join(t["text"] for t in scored) == content
            assert chunks[-1].choices[0].finish_reason == "content_filter"
            moderation = chunks[-1].model_dump()["moderation"]
            assert moderation["response_token_index"] == expected.stop_index
            assert moderation["score"] == pytest.approx(expected.scores[expected.stop_index], abs=1e-4)
            assert moderation["chars_withheld"] >= 0 and moderation["chars_released"] == len(content)
            wait_until(lambda: _freed(gateway), message="proxy stream freed")
            wait_until(lambda: _freed(upstream), message="the upstream instance saw the cancel")


@pytest.mark.parametrize("fault, error_type", [
    ("fault:error", "upstream_error"),
    ("fault:malformed", "upstream_error"),
    ("fault:drop", "upstream_error"),
    ("fault:timeout", "upstream_timeout"),
])
def test_upstream_failure_mid_stream_ends_with_an_error_event_and_releases_nothing_unscored(monitor, fault,
                                                                                          error_type):
    _operate(monitor, 1.0)
    response_text = text_for(PROMPT)
    with scripted_upstream(chunking="random", stall_seconds=3) as (upstream, url):
        with proxy_gateway(monitor, url, timeout=0.5) as (gateway, server):
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**CHAT, "model": fault}) as answer:
                events = read_sse(answer.iter_lines())
            assert events[-1]["error"]["type"] == error_type
            content = [e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]
            released = "".join(e["choices"][0]["delta"]["content"] for e in content)
            scored = "".join(t["text"] for e in content for t in e["scm"]["tokens"])
            assert released == scored and response_text.startswith(released)
            wait_until(lambda: _freed(gateway), message="states freed after the upstream failure")
            # The official client surfaces the error event as an exception; a non-streaming request gets a 5xx.
            with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused") as client:
                with pytest.raises(openai.APIError):
                    for _ in client.chat.completions.create(model=fault, stream=True, messages=CHAT["messages"]):
                        pass
            refused = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "stream": False, "model": fault})
            assert refused.status_code in (502, 504) and refused.json()["error"]["type"] == error_type
            wait_until(lambda: _freed(gateway) and upstream.live == 0, message="everything freed")


def test_upstream_error_status_is_relayed_before_streaming(monitor):
    _operate(monitor, 1.0)
    with scripted_upstream() as (_, url):
        with proxy_gateway(monitor, url) as (gateway, server):
            failed = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "model": "fault:status"})
            # The status survives; the upstream's own words do not (docs/SECURITY.md).
            assert failed.status_code == 502
            assert failed.json()["error"]["message"] == "the upstream failed (HTTP 500)"
            bad = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "model": "fault:bad-request"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
            assert "scripted bad request" not in bad.text
            wait_until(lambda: _freed(gateway), message="freed after a refused request")
        with proxy_gateway(monitor, "http://127.0.0.1:9/v1") as (gateway, server):  # nothing listens on port 9
            unreachable = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT)
            assert unreachable.status_code == 502 and unreachable.json()["error"]["code"] == "upstream_unreachable"
            wait_until(lambda: _freed(gateway), message="freed after a refused request")


def test_client_disconnect_closes_the_upstream_connection_and_frees_the_stream(monitor):
    _operate(monitor, 1.0)
    with scripted_upstream(deltas_per_second=50, response_words=400) as (upstream, url):
        with proxy_gateway(monitor, url) as (gateway, server):
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=CHAT) as answer:
                for line in answer.iter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        break  # monitored text is flowing; now the client goes away
            wait_until(lambda: _freed(gateway), message="the gateway freed the stream")
            wait_until(lambda: upstream.live == 0, message="the upstream saw the connection close")
            assert upstream.client_gone == 1 and upstream.completed == 0


def test_full_gateway_answers_429_with_retry_after_and_shutdown_ends_live_streams(monitor):
    _operate(monitor, 1.0)
    with scripted_upstream(deltas_per_second=50, response_words=400) as (_, url):
        with proxy_gateway(monitor, url, retry_after=3, scheduler_options={"max_streams": 1}) as (gateway, server):
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=CHAT, timeout=10) as held:
                lines = held.iter_lines()
                next(lines)
                refused = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT)
                assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
                assert refused.json()["error"]["type"] == "rate_limit_error"
                asyncio.run_coroutine_threadsafe(gateway.begin_shutdown(0.0), gateway.scheduler._loop)
                events = read_sse(lines)
            assert events[-1]["error"]["type"] == "server_shutdown"
            assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT).status_code == 503
            assert httpx.get(f"{server.url}/health").json()["status"] == "draining"
            wait_until(lambda: _freed(gateway), message="states freed at shutdown")
            assert "scm_rejected_total 1.0" in httpx.get(f"{server.url}/metrics").text
