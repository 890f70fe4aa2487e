"""The streaming fast path (serve/cuda_step.py) on tiny random models, on the CPU.

What must hold: the static decoder step gives the eager runtime's scores (fp32, 1e-5) for every supported backbone,
batched streams of different lengths, idle rows, multi-token pushes and slab growth; the graph bookkeeping (static
input buffers, keys on the slab's buffers, capture on second use, eviction) gives the same scores when "capture"
is the eager stand-in; a failed capture leaves the monitor answering through the eager runtime; selection falls
back to the eager runtime on a CPU and refuses forced modes that cannot run. A real CUDA-graph check runs where a
GPU is present.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, Qwen3Config

from model import SCMConfig, SCMModel
from serve.monitor import StreamingMonitor
from serve.cuda_step import (FastStep, capture_eagerly, make_fast_step, read_length_bucket,
                                  static_step_support)
from utils.decision_rules import DelayK

from tests.tiny_models import TINY_VOCAB, tiny_qwen2_config

FP32_TOLERANCE = 1e-5
NEVER = 10**9


def _backbone_config(kind: str):
    common = dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if kind == "qwen2":
        return tiny_qwen2_config()
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "qwen3":
        return Qwen3Config(**common, head_dim=8)
    raise AssertionError(kind)


def _tiny_scm(kind: str = "qwen2", seed: int = 0) -> SCMModel:
    torch.manual_seed(seed)
    return SCMModel(SCMConfig(backbone_config=_backbone_config(kind).to_dict())).eval()


@pytest.fixture(scope="module")
def qwen2_model() -> SCMModel:
    return _tiny_scm("qwen2")


def _drive(monitor: StreamingMonitor, seed: int = 0, streams: int = 5, steps: int = 90,
           multi_token_every: int = 17) -> list[list[float]]:
    """A deterministic session: streams of different prompt lengths, mostly one-token pushes of all streams, some
    pushes that leave streams idle (same slab, idle rows), some multi-token pushes; returns each stream's scores
    (token then holistic, in push order)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(TINY_VOCAB) for _ in range(rng.randint(3, 30))] for _ in range(streams)]
    states = monitor.start_many(prompt_ids=prompts)
    scores: list[list[float]] = [[] for _ in states]
    for step in range(steps):
        active = list(range(streams)) if step % 4 else list(range(streams - 2))  # >= half: idle rows, same slab
        if multi_token_every and step % multi_token_every == 5:
            new = [[rng.randrange(TINY_VOCAB) for _ in range(rng.randint(0, 4))] for _ in active]
        else:
            new = [[rng.randrange(TINY_VOCAB)] for _ in active]
        for index, result in zip(active, monitor.push_many([states[i] for i in active], new)):
            scores[index] += result.token_scores + result.holistic_scores
    return scores


def _max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(row) for row in a] == [len(row) for row in b]
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


# ------------------------------------------------------------------------------------------- read-length buckets


@pytest.mark.parametrize("kv_length, capacity, expected", [
    (1, 192, 64), (64, 192, 64), (65, 192, 128), (129, 192, 192), (200, 256, 256), (255, 1024, 256),
    (257, 1024, 320), (1025, 8192, 1280), (4097, 8192, 5120), (4097, 4160, 4160),
])
def test_read_length_bucket_rounds_up_by_at_most_a_quarter(kv_length, capacity, expected):
    assert read_length_bucket(kv_length, capacity) == expected


@pytest.mark.parametrize("kv_length", [0, 300])
def test_read_length_bucket_rejects_lengths_outside_the_buffer(kv_length):
    with pytest.raises(ValueError, match=r"kv_length must be in \[1, capacity=256\]"):
        read_length_bucket(kv_length, 256)


# ------------------------------------------------------------------------------------------- static step == eager


@pytest.mark.parametrize("kind", ["qwen2", "llama", "qwen3"])
def test_static_step_equals_the_eager_runtime(kind):
    model = _tiny_scm(kind)
    eager = _drive(StreamingMonitor(model, rule=DelayK(NEVER), fast_path="off"))
    static_monitor = StreamingMonitor(model, rule=DelayK(NEVER), fast_path="static")
    static = _drive(static_monitor)
    assert _max_difference(eager, static) <= FP32_TOLERANCE
    stats = static_monitor.fast_path_stats()
    assert stats["mode"] == "static" and stats["captures"] == 0
    assert stats["static_steps"] == 1 + 90  # the prompt forward and every push took the static step


def test_static_step_equals_eager_with_the_eager_attention_mask(qwen2_model):
    eager = _drive(StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path="off", attn_implementation="eager"),
                   steps=30)
    static = _drive(StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path="static"), steps=30)
    qwen2_model.set_attn_implementation("sdpa")
    assert _max_difference(eager, static) <= FP32_TOLERANCE


def test_static_step_stops_where_the_eager_runtime_stops(qwen2_model):
    """Stop decisions, not only scores: same stop index and count per stream under delay-k."""
    def stops(fast_path):
        monitor = StreamingMonitor(qwen2_model, theta=0.5, rule=DelayK(4), fast_path=fast_path)
        rng = random.Random(7)
        states = monitor.start_many(prompt_ids=[[rng.randrange(TINY_VOCAB) for _ in range(5 + i)] for i in range(6)])
        for _ in range(80):
            live = [s for s in states if not s.stopped]
            if not live:
                break
            monitor.push_many(live, [[rng.randrange(TINY_VOCAB)] for _ in live])
        return [(s.stop.index, s.stop.count) if s.stop else None for s in states]

    eager = stops("off")
    assert any(stop is not None for stop in eager)  # the check is not vacuous
    assert stops("static") == eager
    assert stops(FastStep(qwen2_model, "cuda-graph", capture=capture_eagerly)) == eager


# ------------------------------------------------------------------------------------------- graph bookkeeping


def test_graph_bookkeeping_with_an_eager_capture_equals_the_eager_runtime(qwen2_model):
    eager = _drive(StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path="off"))
    fast = FastStep(qwen2_model, "cuda-graph", capture=capture_eagerly)
    monitor = StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path=fast)
    assert monitor.fast_path == "cuda-graph"
    assert _max_difference(eager, _drive(monitor)) <= FP32_TOLERANCE
    stats = monitor.fast_path_stats()
    assert stats["failure"] is None and stats["captures"] >= 1 and stats["replays"] > stats["captures"]
    assert fast.handles(1) and not fast.handles(2)  # multi-token pushes keep the eager runtime


def test_graphs_are_captured_on_second_use_and_keyed_by_the_slab_buffers(qwen2_model):
    fast = FastStep(qwen2_model, "cuda-graph", capture=capture_eagerly)
    monitor = StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path=fast)
    state = monitor.start(prompt_ids=list(range(10)))  # capacity 74: columns 0..72 usable
    monitor.push(state, [1])
    assert (fast.stats.captures, fast.stats.replays, fast.stats.static_steps) == (0, 0, 1)
    monitor.push(state, [2])
    assert (fast.stats.captures, fast.stats.replays) == (1, 1)
    for token in range(50):  # lengths 12..61: still read bucket 64, same buffers
        monitor.push(state, [token])
    assert (fast.stats.captures, fast.stats.replays) == (1, 51)
    # Lengths 62..80: bucket 128 (captured on its second use), then the slab grows (new buffers, new graph).
    for token in range(19):
        monitor.push(state, [token])
    assert state._slab.capacity == 148
    assert fast.stats.captures == 3 and fast.stats.static_steps == 3


def test_evicted_graphs_are_recaptured_and_answers_do_not_change(qwen2_model):
    eager = _drive(StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path="off"), steps=40)
    fast = FastStep(qwen2_model, "cuda-graph", capture=capture_eagerly, max_graphs=1, capture_on_use=1)
    assert _max_difference(eager, _drive(StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path=fast),
                                         steps=40)) <= FP32_TOLERANCE
    assert fast.stats.evictions >= 1 and len(fast._graphs) == 1


def test_a_failed_capture_falls_back_to_the_eager_runtime_for_good(qwen2_model):
    def broken_capture(step):
        raise RuntimeError("operation not permitted when stream is capturing")

    eager = _drive(StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path="off"), steps=20)
    fast = FastStep(qwen2_model, "cuda-graph", capture=broken_capture)
    monitor = StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path=fast)
    assert _max_difference(eager, _drive(monitor, steps=20)) <= FP32_TOLERANCE
    stats = monitor.fast_path_stats()
    assert stats["failure"] == "RuntimeError: operation not permitted when stream is capturing"
    assert stats["captures"] == 0 and stats["replays"] == 0 and not fast.handles(1)


# ------------------------------------------------------------------------------------------- selection


def test_auto_selects_the_eager_runtime_on_a_cpu(qwen2_model):
    monitor = StreamingMonitor(qwen2_model)
    assert monitor.fast_path == "off" and monitor.fast_path_stats() is None
    assert make_fast_step(qwen2_model, "auto") is None and make_fast_step(qwen2_model, "off") is None


def test_forced_cuda_graph_on_a_cpu_says_what_to_do(qwen2_model):
    with pytest.raises(ValueError, match="needs the model on a CUDA device, it is on cpu; use fast_path='auto'"):
        StreamingMonitor(qwen2_model, fast_path="cuda-graph")


def test_unknown_fast_path_names_the_choices(qwen2_model):
    with pytest.raises(ValueError, match="fast_path must be one of auto, off, static, cuda-graph, got 'graph'"):
        StreamingMonitor(qwen2_model, fast_path="graph")


def test_unsupported_backbone_is_named_and_forced_modes_refuse_it():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=TINY_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    model = SCMModel(SCMConfig(backbone_config=config.to_dict())).eval()
    assert "this one is 'gpt2'" in static_step_support(model)
    assert static_step_support(_tiny_scm("llama")) is None
    with pytest.raises(ValueError, match="fast_path='static': the static streaming step supports backbones of type"):
        StreamingMonitor(model, fast_path="static")
    assert StreamingMonitor(model, fast_path="auto").fast_path == "off"


def test_fast_step_rejects_bad_settings(qwen2_model):
    with pytest.raises(ValueError, match="mode must be 'static' or 'cuda-graph', got 'eager'"):
        FastStep(qwen2_model, "eager")
    with pytest.raises(ValueError, match="max_graphs and capture_on_use must be >= 1, got 0 and 2"):
        FastStep(qwen2_model, "static", max_graphs=0)


# ------------------------------------------------------------------------------------------- real CUDA graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_path_equals_the_eager_runtime_on_a_gpu():
    model = _tiny_scm("qwen2").to("cuda")
    eager = _drive(StreamingMonitor(model, rule=DelayK(NEVER), fast_path="off"))
    monitor = StreamingMonitor(model, rule=DelayK(NEVER))
    assert monitor.fast_path == "cuda-graph"
    fast = _drive(monitor)
    stats = monitor.fast_path_stats()
    assert stats["failure"] is None and stats["replays"] > 0
    assert _max_difference(eager, fast) <= 1e-4  # fp32 on a GPU: other kernels, other summation orders


def test_freeing_a_slab_drops_the_graphs_captured_over_it(qwen2_model):
    fast = FastStep(qwen2_model, "cuda-graph", capture=capture_eagerly, capture_on_use=1)
    monitor = StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path=fast)
    state = monitor.start(prompt_ids=list(range(10)))
    monitor.push(state, [1])
    monitor.push(state, [2])
    assert len(fast._graphs) == 1
    monitor.close(state)  # the slab's last stream: the slab is freed, and its graphs with it
    assert len(fast._graphs) == 0 and monitor.memory_stats()["slabs"] == 0
    # A new slab of the same shape (its buffers may reuse the freed memory) gets its own graph and right answers.
    eager = StreamingMonitor(qwen2_model, rule=DelayK(NEVER), fast_path="off")
    again = monitor.start(prompt_ids=list(range(10)))
    reference = eager.start(prompt_ids=list(range(10)))
    for token in (5, 6, 7):
        assert monitor.push(again, [token]).scores == pytest.approx(eager.push(reference, [token]).scores, abs=1e-5)
