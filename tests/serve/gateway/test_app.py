"""The gateway's HTTP application in local mode (serve/gateway/app.py): the official openai client streams through
it; what it receives is the scored prefix; stops, bad requests, limits, auth, metrics, moderations, disconnects.

The generator is a tiny random Llama over SmolLM2's tokenizer (greedy, so its response is known offline); the monitor
a tiny random SCM over the same tokenizer, so the gateway monitors the generated ids directly.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from serve.gateway.scheduler import span_texts
from tests.serve.gateway.helpers import (expected_for_ids, generate_offline, load_monitor, local_gateway, read_sse,
                                         theta_between, wait_until)
from utils.decision_rules import DelayK

PROMPT = "How do I bake bread?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def monitor(tiny_scm_dir):
    return load_monitor(tiny_scm_dir, theta=0.5, k=2)


@pytest.fixture(scope="module")
def response_ids(tiny_generator):
    ids = generate_offline(tiny_generator, MESSAGES, MAX_TOKENS)
    assert len(ids) == MAX_TOKENS  # the tiny generator never emits EOS here: the stop must cut it
    return ids


def _operate(monitor, theta: float, k: int) -> None:
    monitor.theta, monitor.rule = theta, DelayK(k)


def _stopping_theta(monitor, response_ids) -> float:
    """A theta with which delay-2 stops inside the first 24 tokens (exactly two of them reach it)."""
    return theta_between(expected_for_ids(monitor, PROMPT, response_ids).scores[:24], 2)


def test_openai_stream_releases_exactly_the_scored_prefix_and_stops_with_content_filter(monitor, tiny_generator,
                                                                                         response_ids):
    _operate(monitor, _stopping_theta(monitor, response_ids), 2)
    expected = expected_for_ids(monitor, PROMPT, response_ids)
    assert expected.stop_index is not None and expected.stop_index < MAX_TOKENS - 1
    with local_gateway(monitor, tiny_generator) as (gateway, server):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True,
                                                     max_tokens=MAX_TOKENS, temperature=0))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == expected.text
        # Every released piece is exactly the text of tokens the monitor scored, with their scores.
        scored = [t for c in chunks for t in (c.model_extra.get("scm") or {}).get("tokens", [])]
        assert "".join(t["text"] for t in scored) == content
        assert [t["score"] for t in scored] == pytest.approx(expected.scores[: expected.stop_index], abs=1e-4)
        final = chunks[-1]
        assert final.choices[0].finish_reason == "content_filter"
        moderation = final.model_dump()["moderation"]
        assert moderation["flagged"] and moderation["stopped"]
        assert moderation["response_token_index"] == expected.stop_index
        assert moderation["token_id"] == response_ids[expected.stop_index]
        assert moderation["score"] == pytest.approx(expected.scores[expected.stop_index], abs=1e-4)
        assert (moderation["rule"], moderation["k"], moderation["count"]) == ("delay-2", 2, 2)
        assert moderation["theta"] == monitor.theta and moderation["chars_released"] == len(content)
        assert moderation["output"]["results"][0]["flagged"] is True
        wait_until(lambda: gateway.scheduler.open_states() == 0, message="monitor states freed")
        assert gateway.scheduler.live_streams == 0

        # The same request without streaming: the same text and decision; generation stopped early.
        response = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS,
                                                  temperature=0)
        assert response.choices[0].message.content == expected.text
        assert response.choices[0].finish_reason == "content_filter"
        assert response.model_dump()["moderation"]["response_token_index"] == expected.stop_index
        assert response.usage.completion_tokens < MAX_TOKENS

        metrics = httpx.get(f"{server.url}/metrics").text
        assert "scm_stops_total 2.0" in metrics
        assert 'scm_requests_total{outcome="stopped",route="/v1/chat/completions"} 2.0' in metrics
        assert "scm_tokens_saved_total" in metrics and "scm_monitor_batch_streams_count" in metrics


def test_unstopped_stream_releases_everything_and_reports_usage(monitor, tiny_generator, response_ids):
    _operate(monitor, 1.0, 1)
    expected = expected_for_ids(monitor, PROMPT, response_ids)
    assert expected.stop_index is None
    with local_gateway(monitor, tiny_generator) as (gateway, server):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True,
                                                     max_tokens=MAX_TOKENS, temperature=0,
                                                     stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert [c.choices[0].finish_reason for c in finals] == ["length"]
        assert finals[0].model_dump()["moderation"]["flagged"] is False
        assert chunks[-1].usage.completion_tokens == MAX_TOKENS and chunks[-1].choices == []
        # Text completions take the raw prompt.
        completion = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0)
        assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 5


def test_moderations_endpoint_scores_a_finished_text_like_the_offline_pass(monitor, tiny_generator):
    text = "Mix flour and water, knead it well, then let the dough rest."
    ids = monitor.tokenizer(text, add_special_tokens=False)["input_ids"]
    _operate(monitor, 0.5, 1)
    scores = expected_for_ids(monitor, "", ids).scores
    _operate(monitor, theta_between(scores, 3), 3)
    with local_gateway(monitor, tiny_generator) as (_, server):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        result = client.moderations.create(input=[text, "ok"]).results[0]
        assert result.flagged is True
        assert result.category_scores.model_dump()["harmful"] == pytest.approx(max(scores), abs=1e-4)
        body = httpx.post(f"{server.url}/v1/moderations",
                          json={"input": text, "return_token_scores": True}).json()["results"][0]["scm"]
        assert body["response_token_index"] == max(sorted(range(len(scores)), key=lambda i: -scores[i])[:3])
        assert "".join(t["text"] for t in body["tokens"]) == text
        assert [t["score"] for t in body["tokens"]] == pytest.approx(scores, abs=1e-4)
        assert [t["text"] for t in body["tokens"]] == span_texts(monitor.tokenizer, text, ids)


BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", b"{oops", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b'{"model": "m", "messages": []}', 400, "invalid_value"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}', 400,
     "invalid_value"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "system", "content": "hi"}]}', 400,
     "no_user_message"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "' + b"word " * 600 + b'"}]}',
     400, "context_length_exceeded"),
    ("POST", "/v1/completions", b'{"prompt": 7}', 400, "invalid_value"),
    ("POST", "/v1/moderations", b'{"input": {"text": "x"}}', 400, "invalid_value"),
    # Lone surrogates (valid JSON, not Unicode text): in the prompt, a message that is not the last, moderations.
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi \\ud83d"}]}', 400,
     "invalid_value"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "system", "content": "\\udc80"}, {"role": "user", '
                                     b'"content": "hi"}]}', 400, "invalid_value"),
    ("POST", "/v1/completions", b'{"prompt": "a \\udfff"}', 400, "invalid_value"),
    ("POST", "/v1/moderations", b'{"input": "x \\ud83d"}', 400, "invalid_value"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 100_000 +
     b"]" * 100_000 + b"}", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", '
                                     b'"d", "e"]}', 400, "invalid_value"),
    ("GET", "/v1/chat/completions", b"", 405, "405"),
    ("POST", "/v1/nothing", b"{}", 404, "404"),
]


def test_every_bad_request_gets_a_4xx_with_an_openai_style_error_body(monitor, tiny_generator):
    _operate(monitor, 0.5, 2)
    with local_gateway(monitor, tiny_generator) as (gateway, server):
        for method, path, body, status, code in BAD_REQUESTS:
            response = httpx.request(method, f"{server.url}{path}", content=body,
                                     headers={"Content-Type": "application/json"})
            assert response.status_code == status, (path, body[:60], response.text)
            error = response.json()["error"]
            assert error["code"] == code and error["message"] and error["type"] == "invalid_request_error"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        with pytest.raises(openai.BadRequestError, match="no user message"):
            client.chat.completions.create(model="tiny", messages=[{"role": "assistant", "content": "hi"}])
        assert gateway.scheduler.live_streams == 0 and gateway.scheduler.open_states() == 0


def test_api_key_guards_every_route_but_health_and_the_page(monitor, tiny_generator):
    _operate(monitor, 1.0, 1)
    with local_gateway(monitor, tiny_generator, api_key="sesame") as (_, server):
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        assert "<title>SCM moderated chat</title>" in httpx.get(f"{server.url}/").text
        for path in ("/metrics", "/v1/models"):
            denied = httpx.get(f"{server.url}{path}")
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong").models.list()
        models = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sesame").models.list()
        assert [m.id for m in models.data] == ["tiny-generator"]


def test_monitor_failure_fails_closed_by_default_and_open_when_configured(monitor, tiny_generator, response_ids):
    _operate(monitor, 1.0, 1)
    expected = expected_for_ids(monitor, PROMPT, response_ids)
    original = monitor.push_many
    calls = {"n": 0}

    def failing_push_many(states, new_ids):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("simulated accelerator failure")
        return original(states, new_ids)

    monitor.push_many = failing_push_many
    try:
        with local_gateway(monitor, tiny_generator) as (gateway, server):
            body = {"messages": MESSAGES, "stream": True, "max_tokens": MAX_TOKENS}
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
                events = read_sse(response.iter_lines())
            assert events[-1]["error"]["type"] == "monitor_error"
            released = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
            scored = "".join(t["text"] for e in events[:-1] for t in e.get("scm", {}).get("tokens", []))
            assert released == scored and expected.text.startswith(released) and len(released) < len(expected.text)
            wait_until(lambda: gateway.scheduler.open_states() == 0, message="states freed after the failure")
        calls["n"] = 0
        with local_gateway(monitor, tiny_generator, scheduler_options={"on_error": "open"}) as (_, server):
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
            response = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS,
                                                      temperature=0)
            assert response.choices[0].message.content == expected.text
            assert response.model_dump()["moderation"]["unmonitored"] is True
    finally:
        monitor.push_many = original


def test_generator_with_another_tokenizer_is_monitored_through_the_text_guard(monitor, tmp_path, qwen_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.serve.gateway.helpers import expected_for_text
    from tests.tiny_checkpoints import build_tiny_generator

    folder = build_tiny_generator(tmp_path / "qwen-generator", qwen_tokenizer_dir, seed=1, varied=True)
    generator = (AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder))
    _operate(monitor, 1.0, 1)
    with local_gateway(monitor, generator) as (gateway, server):
        assert not gateway.ids_path
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 30, "temperature": 0}
        full = httpx.post(f"{server.url}/v1/completions", json=body).json()["choices"][0]["text"]
        scores = expected_for_text(monitor, PROMPT, full).scores
        _operate(monitor, theta_between(scores[:12], 1), 1)
        expected = expected_for_text(monitor, PROMPT, full)
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused") as client:
            chunks = list(client.completions.create(stream=True, **body))
        assert "".join(c.choices[0].text for c in chunks) == expected.text
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert chunks[-1].model_dump()["moderation"]["response_token_index"] == expected.stop_index
