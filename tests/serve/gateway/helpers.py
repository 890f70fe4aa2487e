"""Helpers of the gateway tests: servers on loopback (uvicorn in a thread, a port chosen by the OS), gateways in
local and proxy mode, the scripted upstream, and the offline expectations a served stream must equal.

Scores of a tiny random monitor are random but deterministic; each test picks theta from the offline scores so that
some streams stop and others do not, away from any score (streamed and offline scores differ by ~1e-6).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from serve.gateway.app import Gateway, create_app
from serve.gateway.server import BackgroundServer
from serve.gateway.sources import LocalGenerator, Upstream
from serve.gateway.detokenize import IncrementalDetokenizer
from serve.monitor import StreamingMonitor, score_offline
from test.scripted_upstream import Script, ScriptedUpstream, UpstreamArguments, create_upstream_app


def wait_until(condition, timeout: float = 10.0, message: str = "condition") -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {message}")
        time.sleep(0.01)


def load_monitor(path: Path, theta: float, k: int = 1, rule: str = "delay-k") -> StreamingMonitor:
    """The tiny monitor on the CPU at the given operating point."""
    return StreamingMonitor.from_pretrained(path, theta=theta, k=k, rule=rule, device="cpu")


@contextmanager
def local_gateway(monitor: StreamingMonitor, generator, **options) -> Iterator[tuple[Gateway, BackgroundServer]]:
    """A local-mode gateway (tiny generator) served on loopback."""
    model, tokenizer = generator
    with _served(Gateway(monitor, generator=LocalGenerator(model, tokenizer, "tiny-generator"), **options)) as pair:
        yield pair


@contextmanager
def proxy_gateway(monitor: StreamingMonitor, upstream_url: str, timeout: float = 10.0,
                  **options) -> Iterator[tuple[Gateway, BackgroundServer]]:
    """A proxy-mode gateway in front of ``upstream_url`` (``.../v1``), served on loopback."""
    with _served(Gateway(monitor, upstream=Upstream(upstream_url, timeout=timeout), **options)) as pair:
        yield pair


@contextmanager
def _served(gateway: Gateway) -> Iterator[tuple[Gateway, BackgroundServer]]:
    try:
        with BackgroundServer(create_app(gateway)) as server:
            yield gateway, server
    finally:
        gateway.scheduler.stop()


@contextmanager
def scripted_upstream(responses: dict[str, str] | None = None, scripts: dict[str, Script] | None = None,
                      **settings) -> Iterator[tuple[ScriptedUpstream, str]]:
    """The scripted upstream server on loopback (``scripts``: raw answers by prompt); yields its state and its
    ``/v1`` URL."""
    state = ScriptedUpstream(UpstreamArguments(**settings), responses=responses, scripts=scripts)
    with BackgroundServer(create_upstream_app(state)) as server:
        yield state, f"{server.url}/v1"


# --------------------------------------------------------------------------------------------------- expectations

def offline_scores(monitor: StreamingMonitor, prompt: str, response_ids: list[int]) -> list[float]:
    """The monitor's scores of ``response_ids`` after ``prompt`` from one offline forward (no cache, no batching)."""
    prompt_ids = monitor.encode_prompt(prompt)
    token, holistic = score_offline(monitor.model, torch.tensor([prompt_ids + list(response_ids)]))
    scores = token if monitor.scorer == "token" else holistic
    return scores[0, len(prompt_ids):].tolist()


def theta_between(scores: list[float], rank: int) -> float:
    """A theta with exactly ``rank`` of ``scores`` at or above it, far (> 1e-4) from every score."""
    ordered = sorted(scores, reverse=True)
    high, low = ordered[rank - 1], ordered[rank]
    assert high - low > 2e-4, f"scores {high} and {low} too close to put theta between them"
    return (high + low) / 2


@dataclass
class Expected:
    """What a client must receive for one stream: the released text and where the monitor stops (or None)."""

    text: str
    stop_index: int | None
    scores: list[float]


def expected_for_text(monitor: StreamingMonitor, prompt: str, response: str) -> Expected:
    """Proxy mode: the guard monitors ``tokens(response)``; after a stop the client has the text before the stop
    token, else the whole response."""
    encoding = monitor.tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    scores = offline_scores(monitor, prompt, encoding["input_ids"])
    stop = monitor.rule.stop_index([s >= monitor.theta for s in scores])
    text = response if stop is None else response[: encoding["offset_mapping"][stop][0]]
    return Expected(text, stop, scores)


def generate_offline(generator, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
    """The tiny generator's greedy response ids to a chat (end-of-sequence and what follows removed)."""
    model, tokenizer = generator
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    response = out[0, len(ids):].tolist()
    eos = tokenizer.eos_token_id
    return response[: response.index(eos)] if eos in response else response


def expected_for_ids(monitor: StreamingMonitor, prompt: str, response_ids: list[int]) -> Expected:
    """Local mode with a shared tokenizer: the monitor reads the generated ids; after a stop the client has the text
    of the ids before the stop token (whole characters only)."""
    scores = offline_scores(monitor, prompt, response_ids)
    stop = monitor.rule.stop_index([s >= monitor.theta for s in scores])
    kept = response_ids if stop is None else response_ids[:stop]
    detokenizer = IncrementalDetokenizer(monitor.tokenizer)
    text = "".join(detokenizer.add(kept)) + ("" if stop is not None else detokenizer.flush())
    return Expected(text, stop, scores)


def read_sse(lines) -> list[dict]:
    """The JSON payloads of SSE lines (``response.iter_lines()`` of httpx), up to ``[DONE]`` or an error event."""
    events = []
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        events.append(json.loads(data))
        if "error" in events[-1]:
            break
    return events
