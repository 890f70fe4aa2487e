"""Continuous batching (serve/gateway/scheduler.py): 64 concurrent streams through the gateway get the decisions each
would get alone (the offline one-pass reference), while their monitor steps are batched."""

from __future__ import annotations

import asyncio

import openai

from tests.serve.gateway.helpers import expected_for_text, load_monitor, proxy_gateway, scripted_upstream, wait_until
from test.scripted_upstream import text_for
from utils.decision_rules import DelayK

STREAMS = 64


def _theta_splitting(expectations, target: int) -> float:
    """A theta away (> 1e-4) from every score with which about ``target`` streams stop (delay-1)."""
    pooled = sorted(s for e in expectations for s in e.scores)
    candidates = [(a + b) / 2 for a, b in zip(pooled, pooled[1:]) if b - a > 2e-4]
    return min(candidates, key=lambda t: abs(sum(max(e.scores) >= t for e in expectations) - target))


def test_64_concurrent_streams_get_the_same_decisions_as_alone_in_batched_steps(tiny_scm_dir):
    monitor = load_monitor(tiny_scm_dir, theta=1.0, k=1)
    prompts = [f"Question number {i}: tell me something." for i in range(STREAMS)]
    texts = [text_for(p, words=12 + i % 5) for i, p in enumerate(prompts)]
    expectations = [expected_for_text(monitor, p, t) for p, t in zip(prompts, texts)]
    monitor.theta, monitor.rule = _theta_splitting(expectations, STREAMS // 2), DelayK(1)
    expectations = [expected_for_text(monitor, p, t) for p, t in zip(prompts, texts)]
    stops = sum(e.stop_index is not None for e in expectations)
    assert 8 <= stops <= STREAMS - 8

    async def one(client, prompt):
        chunks = [c async for c in await client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": prompt}], stream=True)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        final = chunks[-1]
        return text, final.choices[0].finish_reason, final.model_dump()["moderation"]

    async def all_streams(url):
        async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    with scripted_upstream(dict(zip(prompts, texts)), chunking="words", deltas_per_second=20) as (upstream, url):
        with proxy_gateway(monitor, url, scheduler_options={"max_streams": STREAMS}) as (gateway, server):
            results = asyncio.run(all_streams(f"{server.url}/v1"))
            wait_until(lambda: gateway.scheduler.open_states() == 0 and upstream.live == 0,
                       message="every stream freed", timeout=30)
            steps = list(gateway.scheduler.steps)
    for (text, finish, moderation), expected in zip(results, expectations):
        assert text == expected.text
        if expected.stop_index is None:
            assert finish == "stop" and not moderation["flagged"]
        else:
            assert finish == "content_filter" and moderation["response_token_index"] == expected.stop_index
    feed_steps = [s for s in steps if s["kind"] == "feed"]
    assert max(s["streams"] for s in feed_steps) >= 8  # many streams advanced in one forward
    assert sum(s["tokens"] for s in steps) >= sum(len(e.scores[: (e.stop_index or len(e.scores)) + 1])
                                                  for e in expectations)
