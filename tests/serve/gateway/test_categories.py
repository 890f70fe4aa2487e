"""Harm categories on the gateway's wire (serve/gateway/app.py, serve/category_policy.py): the final chunk's
`moderation` object, /v1/moderations, the policy (an annotated category does not stop a stream but is reported and
counted, a blocked one stops it), `--annotations azure`, /metrics and /health, the flags; and a checkpoint without a
category head, whose shapes must stay exactly what they were.

The monitor is a tiny random SCM over SmolLM2's tokenizer with a category head whose weights are set by hand
(zero weights, one large bias: every token names the same category with a known probability), so each test knows
which category a stop names and its category score. The generator is the tiny random Llama of test_app.py.
"""

from __future__ import annotations

import asyncio
import math

import httpx
import openai
import pytest

from serve.category_policy import policy_from_flags, severity
from serve.gateway.app import create_app
from serve.gateway.config import GatewayArguments
from serve.gateway.detokenize import IncrementalDetokenizer
from serve.gateway.server import BackgroundServer, build_gateway
from tests.serve.gateway.helpers import (expected_for_ids, generate_offline, load_monitor, local_gateway, read_sse,
                                         theta_between, wait_until)
from tests.tiny_checkpoints import build_tiny_scm, set_category_bias
from utils.cli import parse_dataclasses
from utils.data.categories import EXTRA_CATEGORIES, OPENAI_CATEGORIES
from utils.decision_rules import DelayK

PROMPT = "How do I bake bread?"
MESSAGES = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 32
LABELS = ["hate", "illicit", "self-harm", "privacy", "other"]
WIRE_KEYS = ["harmful", *OPENAI_CATEGORIES, *EXTRA_CATEGORIES]
BIAS = 6.0
# softmax of the bias: the named category's probability, and every other one's.
P_NAMED = math.exp(BIAS) / (math.exp(BIAS) + len(LABELS) - 1)
P_OTHER = 1 / (math.exp(BIAS) + len(LABELS) - 1)
# The shapes a head-less checkpoint has always had.
STOPPED_KEYS = {"flagged", "stopped", "rule", "theta", "k", "scorer", "tokens_scored", "max_score", "chars_released",
                "response_token_index", "token_id", "score", "count", "chars_withheld", "input", "output"}
RESULT_KEYS = {"type", "model", "flagged", "categories", "category_scores", "category_applied_input_types"}


@pytest.fixture(scope="module")
def category_scm_dir(tmp_path_factory, smol_dir):
    return build_tiny_scm(tmp_path_factory.mktemp("category-scm"), smol_dir, seed=3, max_position_embeddings=512,
                          category_labels=LABELS, category_bias={"illicit": BIAS})


@pytest.fixture(scope="module")
def monitor(category_scm_dir):
    return load_monitor(category_scm_dir, theta=0.5, k=1)


@pytest.fixture(scope="module")
def response_ids(tiny_generator):
    ids = generate_offline(tiny_generator, MESSAGES, MAX_TOKENS)
    assert len(ids) == MAX_TOKENS
    return ids


def _set(monitor, named: str, theta: float, k: int = 1, **flags) -> None:
    """Every token names ``named``; the rule is delay-k at ``theta``; the policy is what ``flags`` say."""
    set_category_bias(monitor.model, {named: BIAS})
    monitor.theta, monitor.rule = theta, DelayK(k)
    monitor.category_policy = policy_from_flags(monitor.category_labels, **flags)


def _flags_theta(monitor, response_ids, flagged: int) -> tuple[float, list[float]]:
    """A theta with which exactly ``flagged`` of the first 24 response tokens are flagged, and the offline scores."""
    scores = expected_for_ids(monitor, PROMPT, response_ids).scores
    return theta_between(scores[:24], flagged), scores


def _stream(server, **body) -> list[dict]:
    request = {"messages": MESSAGES, "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0, **body}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=request) as response:
        return read_sse(response.iter_lines())


def _check_wire(obj: dict, named: str | None, scores: dict[str, float], harmful: bool, harmful_score: float) -> None:
    """categories / category_scores / category_applied_input_types: every key, True only for ``named``."""
    assert list(obj["categories"]) == WIRE_KEYS
    assert list(obj["category_scores"]) == WIRE_KEYS and list(obj["category_applied_input_types"]) == WIRE_KEYS
    assert obj["categories"] == {key: (harmful if key == "harmful" else key == named) for key in WIRE_KEYS}
    assert obj["category_scores"]["harmful"] == pytest.approx(harmful_score, abs=1e-4)
    for key in WIRE_KEYS[1:]:
        assert obj["category_scores"][key] == pytest.approx(scores.get(key, 0.0), abs=1e-4), key
    assert all(value == ["text"] for value in obj["category_applied_input_types"].values())


def _expected_scores(score: float, named: str) -> dict[str, float]:
    return {label: score * (P_NAMED if label == named else P_OTHER) for label in LABELS}


def test_a_blocked_category_stops_the_stream_and_is_named_on_the_wire(monitor, tiny_generator, response_ids):
    theta, scores = _flags_theta(monitor, response_ids, 1)
    _set(monitor, "illicit", theta)
    expected = expected_for_ids(monitor, PROMPT, response_ids)
    stop = expected.stop_index
    assert stop is not None
    with local_gateway(monitor, tiny_generator) as (gateway, server):
        events = _stream(server)
        final = events[-1]
        assert final["choices"][0]["finish_reason"] == "content_filter"
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == expected.text
        moderation = final["moderation"]
        assert set(moderation) == STOPPED_KEYS | {"category", "categories", "category_scores",
                                                  "category_applied_input_types", "annotations", "annotation_counts"}
        assert moderation["category"] == "illicit" and moderation["response_token_index"] == stop
        stop_score = scores[stop]
        _check_wire(moderation, "illicit", _expected_scores(stop_score, "illicit"), True, stop_score)
        assert moderation["category_scores"]["illicit"] == pytest.approx(stop_score * P_NAMED, abs=1e-4)
        assert (moderation["annotations"], moderation["annotation_counts"]) == ([], {})
        (result,) = moderation["output"]["results"]
        assert set(result) == RESULT_KEYS and result["flagged"] is True
        _check_wire(result, "illicit", _expected_scores(stop_score, "illicit"), True, stop_score)
        # Nothing of Azure's shape unless asked for.
        assert all("content_filter_results" not in e["choices"][0] for e in events if e["choices"])
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'scm_category_stops_total{category="illicit"} 1.0' in metrics
        assert "scm_stops_total 1.0" in metrics
        health = httpx.get(f"{server.url}/health").json()
        assert health["monitor"]["categories"] == {"labels": LABELS, "block": LABELS, "annotate": [],
                                                   "thresholds": {}}
        assert health["annotations"] == "none"
        wait_until(lambda: gateway.scheduler.open_states() == 0, message="monitor states freed")


def test_an_annotated_category_does_not_stop_but_is_reported_and_counted(monitor, tiny_generator, response_ids):
    theta, scores = _flags_theta(monitor, response_ids, 3)
    _set(monitor, "hate", theta, annotate="hate")
    flagged = [i for i, s in enumerate(scores) if s >= theta]
    assert len(flagged) >= 3
    alone = expected_for_ids(monitor, PROMPT, response_ids)
    assert alone.stop_index == flagged[0]  # the rule alone would stop here
    detokenizer = IncrementalDetokenizer(monitor.tokenizer)
    everything = "".join(detokenizer.add(response_ids)) + detokenizer.flush()
    with local_gateway(monitor, tiny_generator) as (gateway, server):
        events = _stream(server)
        final = events[-1]
        assert final["choices"][0]["finish_reason"] == "length"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert text == everything  # the whole response: the firings did not stop it
        moderation = final["moderation"]
        assert moderation["flagged"] is False and moderation["stopped"] is False and moderation["category"] is None
        assert [a["response_token_index"] for a in moderation["annotations"]] == flagged
        assert {(a["category"], a["reason"]) for a in moderation["annotations"]} == {("hate", "annotated")}
        first = moderation["annotations"][0]
        assert first["token_id"] == response_ids[flagged[0]] and first["count"] == 1
        assert first["score"] == pytest.approx(scores[flagged[0]], abs=1e-4)
        assert first["category_score"] == pytest.approx(scores[flagged[0]] * P_NAMED, abs=1e-4)
        assert moderation["annotation_counts"] == {"hate": len(flagged)}
        # Not flagged: nothing True; the scores are those of the highest-scoring token.
        peak = max(scores)
        _check_wire(moderation, None, _expected_scores(peak, "hate"), False, peak)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert f'scm_category_annotations_total{{category="hate",reason="annotated"}} {float(len(flagged))}' in metrics
        assert "scm_stops_total 0.0" in metrics and "scm_category_stops_total{" not in metrics

        # Annotated hate, blocked illicit: switching the head's category to illicit stops where the rule stops.
        _set(monitor, "illicit", theta, annotate="hate")
        stopped = _stream(server)[-1]
        assert stopped["choices"][0]["finish_reason"] == "content_filter"
        assert stopped["moderation"]["category"] == "illicit"
        assert stopped["moderation"]["response_token_index"] == flagged[0]
        health = httpx.get(f"{server.url}/health").json()
        assert health["monitor"]["categories"]["annotate"] == ["hate"]


def test_azure_annotations_on_streamed_chunks_and_whole_responses(monitor, tiny_generator, response_ids):
    theta, scores = _flags_theta(monitor, response_ids, 1)
    _set(monitor, "illicit", theta)
    expected = expected_for_ids(monitor, PROMPT, response_ids)
    keys = WIRE_KEYS[1:]
    with local_gateway(monitor, tiny_generator, annotations="azure") as (_, server):
        events = _stream(server)
        content = [e for e in events if e["choices"] and e["choices"][0].get("delta", {}).get("content")]
        assert content
        offset = 0
        for event in content:
            choice = event["choices"][0]
            results, offsets = choice["content_filter_results"], choice["content_filter_offsets"]
            assert list(results) == keys
            assert not any(r["filtered"] for r in results.values())
            tokens = event["scm"]["tokens"]
            peak = max(t["score"] for t in tokens) * P_NAMED
            assert results["illicit"]["severity"] == severity(peak)
            assert results["hate"]["severity"] == "safe" and results["sexual"]["severity"] == "safe"
            end = offset + len(choice["delta"]["content"])
            assert offsets == {"start_offset": offset, "end_offset": end, "check_offset": end}  # hold-back
            offset = end
        final = events[-1]["choices"][0]
        assert final["finish_reason"] == "content_filter"
        stop_score = scores[expected.stop_index] * P_NAMED
        assert final["content_filter_results"]["illicit"] == {"filtered": True, "severity": severity(stop_score)}
        assert sum(r["filtered"] for r in final["content_filter_results"].values()) == 1
        assert final["content_filter_offsets"] == {"start_offset": offset, "end_offset": offset,
                                                   "check_offset": offset}
        assert offset == len(expected.text)
        # A whole response: the results on its choice.
        whole = httpx.post(f"{server.url}/v1/chat/completions",
                           json={"messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}).json()
        assert whole["choices"][0]["content_filter_results"]["illicit"]["filtered"] is True
        assert "content_filter_offsets" not in whole["choices"][0]
        # The official client still reads the chunks.
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True,
                                                     max_tokens=MAX_TOKENS, temperature=0))
        assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_moderations_endpoint_with_a_category_head(monitor, tiny_generator):
    text = "Mix flour and water, knead it well, then let the dough rest."
    ids = monitor.tokenizer(text, add_special_tokens=False)["input_ids"]
    _set(monitor, "illicit", 0.5)
    scores = expected_for_ids(monitor, "", ids).scores
    _set(monitor, "illicit", theta_between(scores, 2), k=2)
    stop = sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:2])[1]
    with local_gateway(monitor, tiny_generator) as (_, server):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        flagged, benign = client.moderations.create(input=[text, "ok"]).results
        assert flagged.flagged is True and flagged.categories.illicit is True and flagged.categories.hate is False
        assert flagged.category_scores.illicit == pytest.approx(scores[stop] * P_NAMED, abs=1e-4)
        body = httpx.post(f"{server.url}/v1/moderations", json={"input": [text, "ok"]}).json()["results"]
        first, second = body
        assert set(first) == {"flagged", "categories", "category_scores", "category_applied_input_types", "scm"}
        _check_wire(first, "illicit", _expected_scores(scores[stop], "illicit"), True, max(scores))
        assert (first["scm"]["category"], first["scm"]["category_token_index"]) == ("illicit", stop)
        assert first["scm"]["response_token_index"] == stop and first["scm"]["annotations"] == []
        # Not flagged: nothing True, the scores at the text's highest-scoring token.
        ok_score = expected_for_ids(monitor, "", monitor.tokenizer("ok", add_special_tokens=False)["input_ids"]).scores
        assert second["flagged"] is False and second["scm"]["category"] is None
        assert second["scm"]["category_token_index"] == max(range(len(ok_score)), key=ok_score.__getitem__)
        _check_wire(second, None, _expected_scores(max(ok_score), "illicit"), False, max(ok_score))
        # An annotated category: the whole text is not flagged, the firings are listed.
        _set(monitor, "illicit", theta_between(scores, 2), k=2, annotate="illicit")
        annotated = httpx.post(f"{server.url}/v1/moderations", json={"input": text}).json()["results"][0]
        assert annotated["flagged"] is False and annotated["categories"]["illicit"] is False
        assert [a["response_token_index"] for a in annotated["scm"]["annotations"]] == [stop]
        assert annotated["scm"]["annotations"][0]["reason"] == "annotated"


def test_a_checkpoint_without_a_head_keeps_todays_shapes(tiny_scm_dir, tiny_generator, response_ids):
    plain = load_monitor(tiny_scm_dir, theta=0.5, k=1)
    assert plain.category_labels is None and plain.category_policy is None
    scores = expected_for_ids(plain, PROMPT, response_ids).scores
    plain.theta = theta_between(scores[:24], 1)
    expected = expected_for_ids(plain, PROMPT, response_ids)
    with local_gateway(plain, tiny_generator) as (_, server):
        moderation = _stream(server)[-1]["moderation"]
        assert set(moderation) == STOPPED_KEYS
        assert moderation["response_token_index"] == expected.stop_index
        (result,) = moderation["output"]["results"]
        assert set(result) == RESULT_KEYS
        assert (result["categories"], result["category_applied_input_types"]) == (
            {"harmful": True}, {"harmful": ["text"]})
        assert result["category_scores"] == {"harmful": pytest.approx(scores[expected.stop_index], abs=1e-4)}
        plain.theta = 1.0
        finished = _stream(server)[-1]["moderation"]
        assert set(finished) == STOPPED_KEYS - {"response_token_index", "token_id", "score", "count",
                                                "chars_withheld"}
        body = httpx.post(f"{server.url}/v1/moderations", json={"input": "Mix flour and water."}).json()
        (item,) = body["results"]
        assert set(item) == {"flagged", "categories", "category_scores", "scm"}
        assert list(item["categories"]) == ["harmful"] and list(item["category_scores"]) == ["harmful"]
        assert set(item["scm"]) == {"theta", "rule", "k", "scorer", "tokens_scored"}
        health = httpx.get(f"{server.url}/health").json()
        assert "categories" not in health["monitor"]
    # Azure's shape over a head-less checkpoint: the `harmful` key alone.
    plain.theta = theta_between(scores[:24], 1)
    with local_gateway(plain, tiny_generator, annotations="azure") as (_, server):
        events = _stream(server)
        first = next(e for e in events if e["choices"] and e["choices"][0].get("content_filter_results"))
        assert list(first["choices"][0]["content_filter_results"]) == ["harmful"]
        final = events[-1]["choices"][0]["content_filter_results"]
        assert final == {"harmful": {"filtered": True, "severity": severity(scores[expected.stop_index])}}


def _gateway(argv: list[str]):
    (args,) = parse_dataclasses((GatewayArguments,), argv=["--upstream", "http://127.0.0.1:9/v1", "--device", "cpu",
                                                            *argv])
    return build_gateway(args)


def test_category_flags_of_the_gateway(category_scm_dir, tiny_scm_dir):
    gateway = _gateway(["--model-path", str(category_scm_dir), "--block-categories", "illicit,self-harm",
                        "--category-thresholds", "illicit=0.6", "--annotations", "azure"])
    try:
        policy = gateway.monitor.category_policy
        assert policy.block == {"illicit", "self-harm"} and policy.annotate == {"hate", "privacy", "other"}
        assert policy.thresholds == {"illicit": 0.6} and gateway.annotations == "azure"
        with BackgroundServer(create_app(gateway)) as server:
            health = httpx.get(f"{server.url}/health").json()
        assert health["monitor"]["categories"] == {
            "labels": LABELS, "block": ["illicit", "self-harm"], "annotate": ["hate", "privacy", "other"],
            "thresholds": {"illicit": 0.6}}
    finally:
        asyncio.run(gateway.aclose())
    with pytest.raises(ValueError, match=r"--block-categories: unknown category weapons; known: hate, illicit, "
                                         r"self-harm, privacy, other"):
        _gateway(["--model-path", str(category_scm_dir), "--block-categories", "illicit,weapons"])
    with pytest.raises(ValueError, match=r"--annotate-categories: this checkpoint has no category head .* "
                                         r"--category-head"):
        _gateway(["--model-path", str(tiny_scm_dir), "--annotate-categories", "hate"])
    with pytest.raises(SystemExit):
        parse_dataclasses((GatewayArguments,), argv=["--annotations", "aws"])
    plain = _gateway(["--model-path", str(tiny_scm_dir)])
    try:
        assert plain.monitor.category_policy is None and plain.annotations == "none"
    finally:
        asyncio.run(plain.aclose())


def test_the_page_shows_the_category_as_text():
    from importlib import resources

    page = resources.files("serve.gateway").joinpath("static/index.html").read_text(encoding="utf-8")
    assert "Category: ${m.category}" in page and "describeCategory(m)" in page
    # The banner and the stop mark take text: no innerHTML anywhere near the moderation object.
    assert "div.textContent = text" in page and "mark.title = describeStop(m)" in page
    assert page.count("innerHTML") == 1 and "innerHTML = `<div class=\"role\">${role}</div>" in page
