"""The monitor scheduler (serve/gateway/scheduler.py): 64 concurrent streams through the gateway get the decisions
each would get alone (the offline one-pass reference), while their monitor steps are batched; an exception in one
stream ends that stream alone; fail-open loses nothing that arrives after the failure; the tokens of every event
add up to its released text."""

from __future__ import annotations

import asyncio

import openai
import pytest

from serve.gateway.scheduler import TEXT, MonitorScheduler
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


# --------------------------------------------------------------------------------------------------- failures

class FailureLog:
    """An observer that records the failures the scheduler survived."""

    def __init__(self) -> None:
        self.causes: list[str] = []

    def observe_step(self, seconds, streams, tokens) -> None:
        pass

    def observe_latency(self, seconds) -> None:
        pass

    def observe_failure(self, cause: str) -> None:
        self.causes.append(cause)


async def _events_until_end(stream, timeout: float = 10.0) -> list:
    events = []
    while not events or not (events[-1].finished or events[-1].stop or events[-1].error and
                             not events[-1].unmonitored):
        events.append(await asyncio.wait_for(stream.next_event(), timeout))
    return events


def test_an_exception_in_one_stream_ends_that_stream_alone_and_the_worker_goes_on(tiny_scm_dir):
    monitor = load_monitor(tiny_scm_dir, theta=1.0, k=1)
    observer = FailureLog()
    scheduler = MonitorScheduler(monitor, observer=observer)

    async def run():
        bad, good = await scheduler.open("a prompt", TEXT), await scheduler.open("a prompt", TEXT)
        # Text no source should ever hand over (the proxy repairs it first): half a surrogate pair.
        bad.submit("half a pair \ud83d here ")
        good.submit("all fine here, and more text ")
        good.finish()
        bad_events, good_events = await asyncio.gather(_events_until_end(bad), _events_until_end(good))
        later = await scheduler.open("a prompt", TEXT)
        later.submit("still served ")
        later.finish()
        later_events = await _events_until_end(later)
        for stream in (bad, good, later):
            scheduler.close(stream)
        return bad_events, good_events, later_events

    try:
        bad_events, good_events, later_events = asyncio.run(run())
        assert bad_events[-1].error == "the monitor could not read this response"
        assert "".join(e.released for e in bad_events) == ""
        assert "".join(e.released for e in good_events) == "all fine here, and more text "
        assert "".join(e.released for e in later_events) == "still served " and later_events[-1].finished
        assert observer.causes == ["input"] and scheduler.alive
        wait_until(lambda: scheduler.open_states() == 0, message="every state freed")
    finally:
        scheduler.stop()


def test_fail_open_keeps_the_input_and_the_end_that_arrive_after_the_failure(tiny_scm_dir, monkeypatch):
    monitor = load_monitor(tiny_scm_dir, theta=1.0, k=1)
    scheduler = MonitorScheduler(monitor, on_error="open", observer=FailureLog())

    def accelerator_failure(*args, **kwargs):
        raise RuntimeError("simulated accelerator failure")

    async def run():
        stream = await scheduler.open("a prompt", TEXT)
        monkeypatch.setattr(monitor, "push_many", accelerator_failure)
        stream.submit("the first part ")
        # Hold the event loop until the worker has failed the stream, so that its failure event is still queued
        # when the rest of the input and the end arrive (what a fast upstream does).
        wait_until(lambda: stream.id not in scheduler._open_states, message="the worker failed the stream")
        stream.submit("and the rest")
        stream.finish()
        events = await _events_until_end(stream)
        scheduler.close(stream)
        return events

    try:
        events = asyncio.run(run())
        assert events[0].error == "the monitor failed on this stream" and events[0].unmonitored
        assert "".join(e.released for e in events) == "the first part and the rest"
        assert events[-1].finished
    finally:
        scheduler.stop()


@pytest.mark.parametrize("together", [True, False])
def test_token_texts_add_up_to_the_released_text_of_every_event(tiny_scm_dir, together):
    monitor = load_monitor(tiny_scm_dir, theta=1.0, k=1)
    scheduler = MonitorScheduler(monitor)
    text = "Mix the flour and water, knead the dough well, then let it rest for an hour before baking 1234567."

    async def run():
        stream = await scheduler.open("a prompt", TEXT)
        events = []
        with scheduler._cond:  # the worker waits: all the text joins one step
            for word in text.split(" "):
                stream.submit(word + " ")
            if together:  # ... and the end with it
                stream.finish()
        if not together:  # the end comes in a step of its own: the held-back last words are scored then
            events.append(await asyncio.wait_for(stream.next_event(), 10))
            stream.finish()
        events += await _events_until_end(stream)
        scheduler.close(stream)
        return events

    try:
        events = asyncio.run(run())
        assert "".join(e.released for e in events) == text + " "
        for event in events:
            assert "".join(t["text"] for t in event.tokens) == event.released
        if not together:  # the last two words, held back until the end, are scored and shown by the last event
            assert events[-1].released == ". " and events[-1].finished
            assert [t["text"] for t in events[-1].tokens] == [".", " "]
        assert sum(len(e.tokens) for e in events) == len(monitor.tokenizer(text + " ",
                                                                           add_special_tokens=False)["input_ids"])
    finally:
        scheduler.stop()
