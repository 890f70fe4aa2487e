"""GPU benchmark of the project's code paths against paper-code-style baselines, in one process on one CUDA GPU.

Sections (each with its own time budget; results are saved after every measurement, so a run cut short keeps
what it measured):

- ``answers``: the streaming fast path (CUDA graphs) against the eager runtime on the same streams: maximum score
  difference (bf16 and fp32, with the tolerance stated) and equality of delay-k stop decisions, thresholds placed
  in gaps of the score distribution (their margin is reported), plus one run of the live rule.
- ``stream``: per-token cost of the monitor (``StreamingMonitor.push_many``, fast path ``auto``) against HF
  transformers incremental decoding with a ``DynamicCache`` (one forward per token, no graphs), batch 1 and 32,
  positions about 128, 1K and 4K, Qwen2.5-0.5B/1.5B/7B shapes.
- ``train``: examples/s of the real training path (``MonitorTrainer`` + ``PaddingCollator`` + length-grouped
  sampler, bf16 autocast, sdpa, the paper's batch 8 x accumulation 2) against the paper-code style (every batch
  padded to 4096, random order), same trainer otherwise.
- ``eval``: examples/s of the real evaluation path (``utils.evaluation.scoring.score_causal``: bf16, length-sorted dynamic
  padding) against the paper-code style (fp32, every batch padded to 4096, batch 8).

Models are random-initialised Qwen2.5-shaped SCMs built from ``Qwen2Config`` (no download); example lengths are
drawn lognormal around FineHarm's mean (~370 tokens), capped at 4096, seeded. Targets (the team's brief, set from
anchors measured on one H200: paper-code-style evaluation 8.6 examples/s against 283 with length-sorted dynamic
padding, training 20 against 140, HF eager streaming 57 ms per token against a 0.23 ms floor): training >= 10x the
paper style, evaluation >= 50x, streaming <= 2 ms/token at batch 1 and <= 5 ms per step for 32 streams, flat from
128 to 4K positions. "Flat" is checked as: at batch 1 the step time at the longest position is at most 1.5x the one
at the shortest (growth there is overhead, not attention work); at batch 32 the attention reads 32 KV caches, which
grow with the position by nature, so there the 5 ms target must hold at every position and the ratio is reported
for information.

Commands::

    bash scripts/run-bench.sh --out "$OUT/gpu-bench"                     # the device run (see results/gpu-bench)
    python -m bench.benchmark --tiny --out /tmp/bench-tiny                # CPU smoke run, seconds
    python -m bench.benchmark --sections answers,stream --stream-models 0.5b --out /tmp/bench

Outputs in ``--out``: ``bench.json`` (device, versions, date, command, settings, every measurement),
``bench.md`` (the tables with the ratios against the targets), ``bench.log`` (the progress lines).
"""

from __future__ import annotations

import gc
import math
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import transformers
from transformers import Qwen2Config, TrainerCallback

from model.modeling_qwen4dual_2CE_w_logic import SCMConfig, SCMModel
from serve.monitor import StreamingMonitor, score_offline
from serve.cuda_step import FastStep, capture_eagerly
from utils.cli import require_at_least, require_positive, run_entry_point
from utils.decision_rules import DelayK, delay_k_stop_index
from utils.io_utils import atomic_write, write_json

SECTIONS = ("answers", "stream", "train", "eval")  # run in this order: the cheapest correctness check first
# Qwen2.5 base model shapes (config.json of the released checkpoints); 0.5B ties its embeddings.
QWEN25_SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
}
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=512, tie_word_embeddings=True)
QWEN25_MAX_POSITIONS = 32768
QWEN25_EOS_ID = 151643  # <|endoftext|>: Qwen2.5's EOS and pad token

TARGETS = {"train_ratio": 10.0, "eval_ratio": 50.0, "stream_ms_per_token_batch1": 2.0,
           "stream_ms_per_step_batch32": 5.0, "stream_flatness": 1.5}
# Score tolerance of "same answers": fp32 differs only by summation order; bf16 keeps 8 mantissa bits, so two
# kernel choices over 24 layers differ by ~1e-3..1e-2 in probability.
SCORE_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
NEVER = 10**9  # a delay-k nobody reaches: timing runs must never stop a stream
PREFILL_CHUNK = 1024  # prompt/catch-up tokens per forward (bounds activation memory at batch 32)


class _Interrupted(BaseException):
    """SIGTERM (the wrapper's timeout): stop, save what was measured, exit."""


@dataclass
class BenchArguments:
    """Flags of ``python -m bench.benchmark`` (sizes are ignored with ``--tiny``, which uses its own)."""

    out: str = field(default="results/gpu-bench", metadata={"help": "Folder for bench.json, bench.md, bench.log."})
    tiny: bool = field(default=False, metadata={"help": "Tiny models and sizes on the CPU: a smoke run in seconds."})
    sections: str = field(default=",".join(SECTIONS), metadata={
        "help": f"Comma-separated sections to run, from {', '.join(SECTIONS)} (always run in that order)."})
    seed: int = field(default=0, metadata={"help": "Seed of weights, lengths and token ids."})
    answers_budget_s: float = field(default=45.0, metadata={"help": "Time budget of the answers section (s)."})
    stream_budget_s: float = field(default=150.0, metadata={"help": "Time budget of the stream section (s)."})
    train_budget_s: float = field(default=90.0, metadata={"help": "Time budget of the train section (s)."})
    eval_budget_s: float = field(default=60.0, metadata={"help": "Time budget of the eval section (s)."})
    length_mean: float = field(default=370.0, metadata={"help": "Mean example length (lognormal, tokens)."})
    length_sigma: float = field(default=0.6, metadata={"help": "Lognormal sigma of the example lengths."})
    max_length: int = field(default=4096, metadata={"help": "Length cap, and the paper style's padded length."})
    train_examples: int = field(default=2048, metadata={"help": "Synthetic training examples."})
    train_warmup_steps: int = field(default=3, metadata={"help": "Untimed optimiser steps per training run."})
    train_steps: int = field(default=100, metadata={"help": "Timed optimiser steps, project path (budget caps)."})
    baseline_train_steps: int = field(default=5, metadata={"help": "Timed optimiser steps, paper style."})
    eval_examples: int = field(default=1024, metadata={"help": "Examples scored by the project's evaluation."})
    eval_batch_sizes: str = field(default="8,32", metadata={"help": "Batch sizes of the project's evaluation."})
    baseline_eval_batches: int = field(default=4, metadata={"help": "Timed batches of 8 of the paper-style eval."})
    stream_models: str = field(default="0.5b,1.5b,7b", metadata={"help": "Qwen2.5 shapes for streaming."})
    stream_batches: str = field(default="1,32", metadata={"help": "Concurrent streams."})
    stream_positions: str = field(default="128,1024,4096", metadata={
        "help": "Stream lengths at which steps are timed."})
    stream_steps: int = field(default=20, metadata={"help": "Timed one-token steps per setting (median reported)."})
    stream_warmup: int = field(default=3, metadata={"help": "Untimed steps per setting (graph captures happen here)."})
    answers_streams: int = field(default=8, metadata={"help": "Streams of the answers check."})
    answers_steps: int = field(default=64, metadata={"help": "One-token steps of the answers check."})


@dataclass
class Settings:
    """The sizes a run uses: the flags, or the tiny profile."""

    sections: list[str]
    device: torch.device
    stream_models: list[str]
    stream_batches: list[int]
    stream_positions: list[int]
    eval_batch_sizes: list[int]
    args: BenchArguments


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--{flag} takes comma-separated integers, e.g. --{flag} 1,32; got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--{flag} needs positive integers, got {text!r}")
    return sorted(set(values))


def resolve_settings(args: BenchArguments) -> Settings:
    """Validate the flags and apply the tiny profile.

    Raises:
        ValueError: naming the flag and what it accepts; a full run without a CUDA GPU.
    """
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"--sections: unknown or empty {unknown or args.sections!r}; choose from "
                         f"{', '.join(SECTIONS)}")
    require_positive(args, "answers_budget_s", "stream_budget_s", "train_budget_s", "eval_budget_s", "length_mean")
    require_at_least(args, 1, "train_warmup_steps", "train_steps", "baseline_train_steps", "eval_examples",
                     "baseline_eval_batches", "stream_steps", "answers_streams", "answers_steps", "train_examples")
    require_at_least(args, 0, "stream_warmup", "length_sigma")
    require_at_least(args, 16, "max_length")
    if args.tiny:
        args = replace(args, max_length=128, length_mean=24.0, train_examples=96, train_warmup_steps=1, train_steps=3,
                       baseline_train_steps=2, eval_examples=40, baseline_eval_batches=2, stream_steps=4,
                       stream_warmup=1, answers_streams=4, answers_steps=24)
        return Settings(sections, torch.device("cpu"), ["tiny"], [1, 4], [16, 64], [8], args)
    if not torch.cuda.is_available():
        raise ValueError("the benchmark measures a CUDA GPU and none is visible; use --tiny for a CPU smoke run")
    models = [m.strip().lower() for m in args.stream_models.split(",") if m.strip()]
    bad = [m for m in models if m not in QWEN25_SHAPES]
    if bad or not models:
        raise ValueError(f"--stream-models: unknown {bad or args.stream_models!r}; choose from "
                         f"{', '.join(QWEN25_SHAPES)}")
    positions = _int_list(args.stream_positions, "stream-positions")
    return Settings(sections, torch.device("cuda"), models, _int_list(args.stream_batches, "stream-batches"),
                    positions, _int_list(args.eval_batch_sizes, "eval-batch-sizes"), args)


# ------------------------------------------------------------------------------------------------ bookkeeping


class Run:
    """Progress lines, section deadlines and the report, saved after every measurement."""

    def __init__(self, out: Path, tiny: bool) -> None:
        self.out = out
        self.started = time.perf_counter()
        self.report: dict[str, Any] = {"meta": {}, "sections": {}}
        self.tiny = tiny
        out.mkdir(parents=True, exist_ok=True)
        self._log = open(out / "bench.log", "a", encoding="utf-8")

    def say(self, message: str) -> None:
        line = f"[bench +{time.perf_counter() - self.started:6.1f}s] {message}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def save(self) -> None:
        self.report["meta"]["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        write_json(self.out / "bench.json", self.report)
        with atomic_write(self.out / "bench.md") as handle:
            handle.write(markdown_report(self.report))

    def close(self) -> None:
        self._log.close()


class Deadline:
    """A section's time budget: measurements start only while it has time left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.perf_counter() + seconds

    def left(self) -> float:
        return self.ends - time.perf_counter()

    def expired(self) -> bool:
        return self.left() <= 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _summary_ms(times_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    return {"median": round(statistics.median(ordered), 4), "mean": round(statistics.fmean(ordered), 4),
            "min": round(ordered[0], 4), "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4)}


def _guarded(run: Run, label: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; an exception becomes ``{"error": ...}`` so the other measurements still run."""
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 - one failed measurement must not cost the whole device run
        run.say(f"{label}: FAILED {type(err).__name__}: {err}")
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}


# ------------------------------------------------------------------------------------------------ models and data


def backbone_config(shape_name: str, max_positions: int) -> Qwen2Config:
    """A Qwen2 config of a named shape (``0.5b``, ``1.5b``, ``7b`` or ``tiny``), sdpa attention, no download."""
    shape = TINY_SHAPE if shape_name == "tiny" else QWEN25_SHAPES[shape_name]
    return Qwen2Config(**shape, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                       attn_implementation="sdpa")


def synthetic_eos_id(vocab: int) -> int:
    """The EOS (= pad) id of the synthetic data: Qwen2.5's where the vocabulary holds it, else the last id."""
    return QWEN25_EOS_ID if vocab > QWEN25_EOS_ID else vocab - 1


def build_random_scm(shape_name: str, device: torch.device, dtype: torch.dtype, seed: int,
                     max_positions: int = QWEN25_MAX_POSITIONS) -> SCMModel:
    """A random-initialised SCM built directly on ``device`` in ``dtype`` (a 7B model never passes through fp32).
    Its holistic head pools as a trained Qwen2.5 checkpoint's does: the EOS, which is the pad id, counts as padding.

    Returns:
        The model in eval mode (training code switches it to train mode itself).
    """
    torch.manual_seed(seed)
    backbone = backbone_config(shape_name, max_positions)
    config = SCMConfig(backbone_config=backbone.to_dict(), pooling_pad_token_id=synthetic_eos_id(backbone.vocab_size))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = SCMModel(config)
    finally:
        torch.set_default_dtype(previous)
    set_weights_dtype(model, dtype)  # a no-op unless some module ignored the default dtype
    model.set_attn_implementation("sdpa")
    return model.eval()


def set_weights_dtype(model: SCMModel, dtype: torch.dtype) -> None:
    """Cast parameters to ``dtype`` but keep the rotary frequencies in fp32, as a checkpoint loaded in bf16 has
    them (a bf16 ``inv_freq`` would put angles off by radians at 4K positions)."""
    model.to(dtype)
    rotary = model.backbone.rotary_emb
    if rotary.inv_freq.dtype != torch.float32:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            model.backbone.rotary_emb = type(rotary)(model.backbone.config).to(rotary.inv_freq.device)
        finally:
            torch.set_default_dtype(previous)


def sample_lengths(n: int, mean: float, sigma: float, max_length: int, seed: int, min_length: int = 8) -> list[int]:
    """Lognormal lengths with the given mean (before capping), clipped to ``[min_length, max_length]``."""
    rng = random.Random(seed)
    mu = math.log(mean) - sigma * sigma / 2
    return [max(min_length, min(max_length, round(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def synthetic_records(n: int, vocab: int, args: BenchArguments, seed: int) -> list[dict[str, Any]]:
    """Processed-data records (``docs/ARCHITECTURE.md``) with random ids below the EOS id: a prompt of 10-30% of the
    length, then the response; a third are harmful with token labels 1 from a random point on; the EOS closes each
    (:func:`synthetic_eos_id`, also the pad id, as in Qwen2.5 data)."""
    rng = random.Random(seed + 1)
    eos = synthetic_eos_id(vocab)
    records = []
    for index, length in enumerate(sample_lengths(n, args.length_mean, args.length_sigma, args.max_length, seed)):
        prompt = max(1, int(length * rng.uniform(0.1, 0.3)))
        response = length - prompt - 1
        harmful = index % 3 == 0
        onset = rng.randrange(response) if harmful else response
        labels = [-100] * prompt + [0] * onset + [1] * (response - onset) + [-100]
        ids = [rng.randrange(1, eos) for _ in range(length - 1)] + [eos]
        records.append({"id": f"bench-{index:05d}", "input_ids": ids,
                        "token_labels": labels, "sequence_labels": int(harmful), "response_start": prompt})
    return records


def _length_facts(lengths: Sequence[int]) -> dict[str, float]:
    return {"n": len(lengths), "mean": round(statistics.fmean(lengths), 1), "median": statistics.median(lengths),
            "max": max(lengths)}


# ------------------------------------------------------------------------------------------------ answers


def _gap_thresholds(scores: Sequence[float], quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> list[dict[str, float]]:
    """Thresholds in the widest gap of the sorted scores near each quantile, so that bf16 noise smaller than the
    margin cannot flip a flag (returns theta and its margin to the nearest score)."""
    ordered = sorted(scores)
    n = len(ordered)
    window = max(1, n // 5)
    chosen = []
    for q in quantiles:
        centre = min(n - 2, max(0, int(q * n)))
        lo, hi = max(0, centre - window), min(n - 2, centre + window)
        best = max(range(lo, hi + 1), key=lambda i: ordered[i + 1] - ordered[i])
        chosen.append({"quantile": q, "theta": (ordered[best] + ordered[best + 1]) / 2,
                       "margin": (ordered[best + 1] - ordered[best]) / 2})
    return chosen


def _answers_session(monitor: StreamingMonitor, prompts: list[list[int]], tokens: list[list[int]]
                     ) -> tuple[list[list[float]], list[list[float]]]:
    """Stream ``tokens`` one per step. The last quarter of the streams sits out every fourth step (idle rows in
    the same slab), so they lag and finish alone (a smaller batch: streams move to a new slab). Returns each
    stream's token and holistic scores in order."""
    n = len(prompts)
    states = monitor.start_many(prompt_ids=prompts)
    token_scores: list[list[float]] = [[] for _ in states]
    holistic_scores: list[list[float]] = [[] for _ in states]
    position = [0] * n
    idle_from = n - max(1, n // 4)
    tick = 0
    while any(p < len(t) for p, t in zip(position, tokens)):
        active = [i for i in range(n) if position[i] < len(tokens[i]) and not (tick % 4 == 3 and i >= idle_from)]
        tick += 1
        if not active:
            continue
        results = monitor.push_many([states[i] for i in active], [[tokens[i][position[i]]] for i in active])
        for i, result in zip(active, results):
            token_scores[i] += result.token_scores
            holistic_scores[i] += result.holistic_scores
            position[i] += 1
    for state in states:
        monitor.close(state)
    return token_scores, holistic_scores


def _live_stops(monitor: StreamingMonitor, prompts: list[list[int]], tokens: list[list[int]]) -> list[Any]:
    states = monitor.start_many(prompt_ids=prompts)
    for step in range(len(tokens[0])):
        live = [i for i, s in enumerate(states) if not s.stopped]
        if not live:
            break
        monitor.push_many([states[i] for i in live], [[tokens[i][step]] for i in live])
    stops = [(s.stop.index, s.stop.count) if s.stop else None for s in states]
    for state in states:
        monitor.close(state)
    return stops


def _fast_monitor(model: SCMModel, **kwargs: Any) -> StreamingMonitor:
    """The monitor with its fast path: ``auto`` on CUDA; on the CPU the graph bookkeeping with the eager stand-in
    for capture (so the tiny run exercises the same code)."""
    if model.device.type == "cuda":
        return StreamingMonitor(model, fast_path="auto", **kwargs)
    return StreamingMonitor(model, fast_path=FastStep(model, "cuda-graph", capture=capture_eagerly), **kwargs)


def bench_answers(run: Run, settings: Settings, deadline: Deadline) -> dict[str, Any]:
    """Same answers: fast path vs eager runtime (and vs one offline forward) on the same streams."""
    args, device = settings.args, settings.device
    shape = "tiny" if args.tiny else "0.5b"
    dtypes = [torch.float32] if device.type == "cpu" else [torch.bfloat16, torch.float32]
    model = build_random_scm(shape, device, dtypes[0], args.seed)
    vocab = model.get_input_embeddings().num_embeddings
    rng = random.Random(args.seed + 11)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(16, 64) if not args.tiny else rng.randint(4, 12))]
               for _ in range(args.answers_streams)]
    tokens = [[rng.randrange(vocab) for _ in range(args.answers_steps)] for _ in prompts]
    result: dict[str, Any] = {"model": shape, "streams": len(prompts), "steps": args.answers_steps,
                              "score_tolerance": dict(SCORE_TOLERANCE), "by_dtype": {}}
    for dtype in dtypes:
        if deadline.expired():
            result["by_dtype"][str(dtype).replace("torch.", "")] = {"skipped": "time budget"}
            continue
        set_weights_dtype(model, dtype)
        name = str(dtype).replace("torch.", "")
        run.say(f"answers: {shape} {name}, {len(prompts)} streams x {args.answers_steps} one-token steps")
        result["by_dtype"][name] = _guarded(run, f"answers {name}",
                                            lambda: _answers_for_dtype(run, model, name, prompts, tokens))
        run.save()
    passed = [entry.get("pass") for entry in result["by_dtype"].values() if "pass" in entry]
    result["pass"] = bool(passed) and all(passed)
    del model
    _free(device)
    return result


def _answers_for_dtype(run: Run, model: SCMModel, dtype_name: str, prompts: list[list[int]],
                       tokens: list[list[int]]) -> dict[str, Any]:
    reference = StreamingMonitor(model, rule=DelayK(NEVER), fast_path="off")
    fast = _fast_monitor(model, rule=DelayK(NEVER))
    ref_token, ref_holistic = _answers_session(reference, prompts, tokens)
    fast_token, fast_holistic = _answers_session(fast, prompts, tokens)
    offline_token, offline_holistic = [], []
    for prompt, response in zip(prompts, tokens):
        token, holistic = score_offline(model, torch.tensor([prompt + response]))
        offline_token.append(token[0, len(prompt):].tolist())
        offline_holistic.append(holistic[0, len(prompt):].tolist())

    def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
        return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))

    tolerance = SCORE_TOLERANCE[dtype_name] if model.device.type == "cuda" else 1e-5
    differences = {"token": max_diff(ref_token, fast_token), "holistic": max_diff(ref_holistic, fast_holistic)}
    decisions = []
    for scorer, ref, got in (("token", ref_token, fast_token), ("holistic", ref_holistic, fast_holistic)):
        for threshold in _gap_thresholds([s for row in ref for s in row]):
            for k in (1, 3, 10):
                ref_stops = [delay_k_stop_index(row, threshold["theta"], k) for row in ref]
                fast_stops = [delay_k_stop_index(row, threshold["theta"], k) for row in got]
                equal = ref_stops == fast_stops
                decisions.append({"scorer": scorer, "theta": round(threshold["theta"], 6),
                                  "margin": round(threshold["margin"], 6), "k": k,
                                  "stopped_streams": sum(s is not None for s in ref_stops), "equal": equal,
                                  # A flip is only a fault when no score came within the observed noise of theta.
                                  "unexplained": not equal and threshold["margin"] > differences[scorer]})
    middle = _gap_thresholds([s for row in ref_token for s in row])[1]
    live_ref = _live_stops(StreamingMonitor(model, theta=middle["theta"], rule=DelayK(3), fast_path="off"), prompts,
                           tokens)
    live_fast = _live_stops(_fast_monitor(model, theta=middle["theta"], rule=DelayK(3)), prompts, tokens)
    live_unexplained = live_ref != live_fast and middle["margin"] > differences["token"]
    entry = {
        "fast_path": fast.fast_path + ("" if model.device.type == "cuda" else " (CPU: eager stand-in for capture)"),
        "fast_path_stats": fast.fast_path_stats(),
        "tolerance": tolerance,
        "max_abs_diff_fast_vs_eager_runtime": differences,
        "max_abs_diff_fast_vs_offline": {"token": max_diff(offline_token, fast_token),
                                         "holistic": max_diff(offline_holistic, fast_holistic)},
        "max_abs_diff_eager_runtime_vs_offline": {"token": max_diff(offline_token, ref_token),
                                                  "holistic": max_diff(offline_holistic, ref_holistic)},
        "decisions": decisions,
        "decisions_equal": sum(d["equal"] for d in decisions),
        "decisions_total": len(decisions),
        "decisions_unexplained": sum(d["unexplained"] for d in decisions),
        "live_rule": {"theta": round(middle["theta"], 6), "margin": round(middle["margin"], 6), "k": 3,
                      "stops_eager_runtime": live_ref, "stops_fast": live_fast, "equal": live_ref == live_fast,
                      "unexplained": live_unexplained},
    }
    graph_used = model.device.type != "cuda" or (entry["fast_path_stats"] or {}).get("replays", 0) > 0
    # Pass: scores within tolerance, the graphs really ran, and no decision differs unless a score lay within the
    # measured noise of its threshold (reported apart: decisions_equal counts exact equality).
    entry["pass"] = bool(max(differences.values()) <= tolerance and entry["decisions_unexplained"] == 0
                         and not live_unexplained and graph_used)
    run.say(f"answers {dtype_name}: max |diff| token {differences['token']:.2e} holistic "
            f"{differences['holistic']:.2e} (tolerance {tolerance:g}); decisions {entry['decisions_equal']}/"
            f"{len(decisions)} equal ({entry['decisions_unexplained']} unexplained); live rule equal "
            f"{live_ref == live_fast}; fast path {entry['fast_path']} {entry['fast_path_stats']}")
    return entry


# ------------------------------------------------------------------------------------------------ streaming


def _monitor_timings(monitor: StreamingMonitor, ids: torch.Tensor, positions: list[int], args: BenchArguments,
                     deadline: Deadline) -> list[dict[str, Any]]:
    """Grow ``B`` streams through ``positions``; at each, time one-token ``push_many`` steps (host scores out)."""
    batch = ids.shape[0]
    states = monitor.start_many(prompt_ids=[row[: min(positions[0], PREFILL_CHUNK)].tolist() for row in ids])
    rows = []
    try:
        for target in positions:
            if deadline.expired():
                rows.append({"position": target, "skipped": "time budget"})
                continue
            while states[0].length < target:
                at = states[0].length
                end = min(target, at + PREFILL_CHUNK)
                monitor.push_many(states, [row[at:end].tolist() for row in ids])
            start = states[0].length
            times = []
            for step in range(args.stream_warmup + args.stream_steps):
                at = states[0].length
                began = time.perf_counter()
                monitor.push_many(states, [[int(row[at])] for row in ids])
                if step >= args.stream_warmup:
                    times.append((time.perf_counter() - began) * 1000)
            summary = _summary_ms(times)
            rows.append({"position": start, "ms_per_step": summary, "ms_per_token": summary["median"] / batch,
                         "slab_capacity": states[0]._slab.capacity})
    finally:
        for state in states:
            monitor.close(state)
    return rows


@torch.inference_mode()
def _eager_timings(model: SCMModel, ids: torch.Tensor, positions: list[int], args: BenchArguments,
                   deadline: Deadline) -> list[dict[str, Any]]:
    """HF incremental decoding: one forward per token over a ``DynamicCache``, both heads, scores to the host."""
    device = model.device
    batch = ids.shape[0]
    cache, length, rows = None, 0, []

    def forward(chunk: torch.Tensor) -> torch.Tensor:
        nonlocal cache
        out = model(input_ids=chunk.to(device), past_key_values=cache, use_cache=True)
        cache = out.cache
        token = torch.softmax(out.token_logits[:, -1].float(), dim=-1)[:, 1]
        holistic = torch.softmax(model.holistic_scorer(out.last_hidden_state[:, -1]).float(), dim=-1)[:, 1]
        return torch.stack((token, holistic)).cpu()

    for target in positions:
        if deadline.expired():
            rows.append({"position": target, "skipped": "time budget"})
            continue
        while length < target:
            end = min(target, length + PREFILL_CHUNK)
            forward(ids[:, length:end])
            length = end
        start, times = length, []
        for step in range(args.stream_warmup + args.stream_steps):
            began = time.perf_counter()
            forward(ids[:, length:length + 1])
            length += 1
            if step >= args.stream_warmup:
                times.append((time.perf_counter() - began) * 1000)
        summary = _summary_ms(times)
        rows.append({"position": start, "ms_per_step": summary, "ms_per_token": summary["median"] / batch})
    del cache
    return rows


def bench_stream(run: Run, settings: Settings, deadline: Deadline) -> dict[str, Any]:
    """Per-token cost of the monitor vs HF eager incremental decoding, per model shape, batch and position."""
    args, device = settings.args, settings.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    longest = settings.stream_positions[-1] + len(settings.stream_positions) * (args.stream_warmup + args.stream_steps)
    result: dict[str, Any] = {"dtype": str(dtype).replace("torch.", ""), "positions": settings.stream_positions,
                              "batches": settings.stream_batches, "steps": args.stream_steps,
                              "warmup": args.stream_warmup, "baseline": "HF forward per token, DynamicCache, sdpa",
                              "models": {}}
    for shape in settings.stream_models:
        if deadline.expired():
            result["models"][shape] = {"skipped": "time budget"}
            continue
        run.say(f"stream: building random {shape} ({result['dtype']}) on {device}")
        model = build_random_scm(shape, device, dtype, args.seed,
                                 max_positions=max(longest + 64, 512) if args.tiny else QWEN25_MAX_POSITIONS)
        vocab = model.get_input_embeddings().num_embeddings
        entry: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()), "batches": {}}
        monitor = StreamingMonitor(model, rule=DelayK(NEVER), fast_path="auto")
        entry["fast_path"] = monitor.fast_path
        for batch in settings.stream_batches:
            if deadline.expired():
                entry["batches"][str(batch)] = {"skipped": "time budget"}
                continue
            ids = torch.randint(0, vocab, (batch, longest + 1), generator=torch.Generator().manual_seed(batch))
            run.say(f"stream: {shape} batch {batch}: monitor ({monitor.fast_path}) at {settings.stream_positions}")
            monitor_rows = _guarded(run, f"stream {shape} b{batch} monitor",
                                    lambda: {"rows": _monitor_timings(monitor, ids, settings.stream_positions, args,
                                                                      deadline)})
            _free(device)
            run.say(f"stream: {shape} batch {batch}: HF eager + DynamicCache")
            eager_rows = _guarded(run, f"stream {shape} b{batch} eager",
                                  lambda: {"rows": _eager_timings(model, ids, settings.stream_positions, args,
                                                                  deadline)})
            _free(device)
            entry["batches"][str(batch)] = {"monitor": monitor_rows, "hf_eager": eager_rows}
            for row_m, row_e in zip(monitor_rows.get("rows", []), eager_rows.get("rows", [])):
                if "ms_per_step" in row_m and "ms_per_step" in row_e:
                    run.say(f"stream: {shape} b{batch} @{row_m['position']}: monitor "
                            f"{row_m['ms_per_step']['median']:.3f} ms/step ({row_m['ms_per_token']:.3f} ms/token), "
                            f"HF eager {row_e['ms_per_step']['median']:.3f} ms/step")
            entry["fast_path_stats"] = monitor.fast_path_stats()
            result["models"][shape] = entry
            run.save()
        if device.type == "cuda":
            entry["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(device)
        result["models"][shape] = entry
        del monitor, model
        _free(device)
    return result


# ------------------------------------------------------------------------------------------------ training


class _StepClock(TrainerCallback):
    """Timestamps optimiser steps (after a device sync) and stops training when the section's time is up."""

    def __init__(self, device: torch.device, warmup: int, deadline: Deadline) -> None:
        self.device, self.warmup, self.deadline = device, warmup, deadline
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D401 - transformers hook
        _sync(self.device)
        self.times.append(time.perf_counter())
        if len(self.times) > self.warmup and self.deadline.expired():
            control.should_training_stop = True
        return control


class _CountingCollator:
    """Wraps a collator to count real and padded token positions (what padding costs)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.real = self.padded = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["attention_mask"].numel()
        return batch


def _train_dataset(records: list[dict[str, Any]]) -> tuple[Any, str]:
    """``train.training.to_dataset`` (a ``datasets.Dataset`` with a length column) where ``datasets`` is installed;
    otherwise a list of the same dicts, which the Trainer's length-grouped sampler measures itself."""
    try:
        from train.training import to_dataset

        return to_dataset(records), "datasets.Dataset (train.training.to_dataset)"
    except ImportError:
        rows = [{"input_ids": r["input_ids"], "token_labels": r["token_labels"],
                 "sequence_labels": int(r["sequence_labels"]), "length": len(r["input_ids"])} for r in records]
        return rows, "list of dicts (datasets not installed)"


def _training_run(run: Run, model: SCMModel, records: list[dict[str, Any]], settings: Settings, deadline: Deadline,
                  paper_style: bool, steps: int) -> dict[str, Any]:
    from train.train_qwen import QwenTrainingArguments
    from train.training import MonitorTrainer, PaddingCollator, use_length_grouping

    args, device = settings.args, settings.device
    with tempfile.TemporaryDirectory(prefix="scm-bench-train-") as output_dir:
        train_args = QwenTrainingArguments(
            output_dir=output_dir, max_steps=args.train_warmup_steps + steps, eval_strategy="no",
            save_strategy="no", load_best_model_at_end=False, report_to="none", disable_tqdm=True,
            seed=args.seed, dataloader_pin_memory=device.type == "cuda",
            precision="bf16" if device.type == "cuda" else "fp32")
        precision = train_args.precision
        if not paper_style:
            use_length_grouping(train_args)
        train_args.label_names = ["token_labels", "sequence_labels"]
        multiple = args.max_length if paper_style else (8 if device.type == "cuda" else 1)
        pad_id = model.config.pooling_pad_token_id  # the EOS, as the paper's code pads Qwen batches
        collator = _CountingCollator(PaddingCollator(pad_token_id=pad_id, pad_to_multiple_of=multiple))
        dataset, dataset_kind = _train_dataset(records)
        clock = _StepClock(device, args.train_warmup_steps, deadline)
        trainer = MonitorTrainer(model=model, args=train_args, data_collator=collator, train_dataset=dataset,
                                 lr_decay=0.99, callbacks=[clock])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()
        per_step = train_args.per_device_train_batch_size * train_args.gradient_accumulation_steps
        timed = len(clock.times) - args.train_warmup_steps
        if timed < 1:
            raise RuntimeError(f"only {len(clock.times)} optimiser steps ran; nothing was timed after warm-up")
        seconds = clock.times[-1] - clock.times[args.train_warmup_steps - 1]
        result = {"style": "paper (padded to max length, random order)" if paper_style
                  else "project (dynamic padding, length-grouped)",
                  "precision": precision, "batch_size": train_args.per_device_train_batch_size,
                  "gradient_accumulation": train_args.gradient_accumulation_steps, "timed_steps": timed,
                  "timed_examples": timed * per_step, "seconds": round(seconds, 3),
                  "examples_per_second": round(timed * per_step / seconds, 2),
                  "real_token_fraction": round(collator.real / max(collator.padded, 1), 4),
                  "dataset": dataset_kind, "optim": str(train_args.optim)}
        if device.type == "cuda":
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        del trainer
    model.zero_grad(set_to_none=True)
    _free(device)
    run.say(f"train ({'paper style' if paper_style else 'project'}): {result['examples_per_second']} ex/s over "
            f"{timed} steps")
    return result


def bench_train(run: Run, settings: Settings, deadline: Deadline) -> dict[str, Any]:
    """Training examples/s: the project's training path vs the paper-code style, same model and trainer."""
    args, device = settings.args, settings.device
    shape = "tiny" if args.tiny else "0.5b"
    model = build_random_scm(shape, device, torch.float32, args.seed)  # fp32 master weights, as run_training does
    vocab = model.get_input_embeddings().num_embeddings
    records = synthetic_records(args.train_examples, vocab, args, args.seed)
    result: dict[str, Any] = {"model": shape, "lengths": _length_facts([len(r["input_ids"]) for r in records])}
    run.say(f"train: project path, {shape}, lengths {result['lengths']}")
    result["project"] = _guarded(run, "train project", lambda: _training_run(run, model, records, settings, deadline,
                                                                              False, args.train_steps))
    run.save()
    # The paper style gets its own share of time: it is the slow one.
    baseline_deadline = Deadline(max(deadline.left(), 0.25 * deadline.seconds))
    run.say("train: paper style (every batch padded to the maximum length)")
    result["paper_style"] = _guarded(run, "train paper style",
                                     lambda: _training_run(run, model, records, settings, baseline_deadline, True,
                                                           args.baseline_train_steps))
    ours, base = result["project"], result["paper_style"]
    if "examples_per_second" in ours and "examples_per_second" in base:
        result["ratio"] = round(ours["examples_per_second"] / base["examples_per_second"], 2)
    del model
    _free(device)
    return result


# ------------------------------------------------------------------------------------------------ evaluation


@torch.inference_mode()
def paper_style_scores(model: SCMModel, examples: Sequence[Any], batch_size: int, padded_length: int) -> int:
    """The paper code's evaluation loop: data order, every batch padded to ``padded_length``, both heads at every
    position, per-example response scores to the host. Returns the number of examples scored."""
    device = model.device
    for begin in range(0, len(examples), batch_size):
        batch = examples[begin:begin + batch_size]
        ids = torch.full((len(batch), padded_length), model.config.pooling_pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, example in enumerate(batch):
            ids[row, :len(example.input_ids)] = torch.tensor(example.input_ids)
            mask[row, :len(example.input_ids)] = 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        token = torch.softmax(out.token_logits.float(), dim=-1)[..., 1].cpu()
        holistic = torch.softmax(model.holistic_scorer(out.last_hidden_state).float(), dim=-1)[..., 1].cpu()
        scores = []  # what the paper code keeps per example
        for row, example in enumerate(batch):
            span = slice(example.response_start, example.response_end)
            scores.append((token[row, span].tolist(), holistic[row, span].tolist()))
    return len(examples)


def bench_eval(run: Run, settings: Settings, deadline: Deadline) -> dict[str, Any]:
    """Evaluation examples/s: ``utils.evaluation.scoring.score_causal`` (bf16, dynamic padding) vs the paper style."""
    from utils.evaluation.scoring import Checkpoint, prepare_example, score_causal

    args, device = settings.args, settings.device
    shape = "tiny" if args.tiny else "0.5b"
    model = build_random_scm(shape, device, torch.float32, args.seed)
    vocab = model.get_input_embeddings().num_embeddings
    records = synthetic_records(args.eval_examples, vocab, args, args.seed + 5)
    examples = [prepare_example(r, f"synthetic record {i}", args.max_length, eos_appended=True,
                                keep_suffix_on_truncation=False) for i, r in enumerate(records)]
    result: dict[str, Any] = {"model": shape, "lengths": _length_facts([len(e.input_ids) for e in examples]),
                              "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}

    def paper_style() -> dict[str, Any]:
        batch = 8
        paper_style_scores(model, examples[:batch], batch, args.max_length)  # warm-up batch
        _sync(device)
        began, scored = time.perf_counter(), 0
        for index in range(args.baseline_eval_batches):
            if index and deadline.left() < 0.3 * deadline.seconds:
                break
            scored += paper_style_scores(model, examples[batch * (index + 1): batch * (index + 2)], batch,
                                         args.max_length)
        _sync(device)
        seconds = time.perf_counter() - began
        return {"dtype": "float32", "batch_size": batch, "padded_length": args.max_length, "examples": scored,
                "seconds": round(seconds, 3), "examples_per_second": round(scored / seconds, 3)}

    run.say(f"eval: paper style (fp32, padded to {args.max_length}, batch 8)")
    result["paper_style"] = _guarded(run, "eval paper style", paper_style)
    run.save()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    set_weights_dtype(model, dtype)
    checkpoint = Checkpoint(model=model, tokenizer=None, task="scm", path=Path("random-init"),
                            max_positions=model.config.backbone_config.max_position_embeddings,
                            pad_id=model.config.pooling_pad_token_id,
                            backbone_type="qwen2")
    result["project"] = {}
    for batch_size in settings.eval_batch_sizes:
        if deadline.expired():
            result["project"][str(batch_size)] = {"skipped": "time budget"}
            continue

        def project(batch_size: int = batch_size) -> dict[str, Any]:
            score_causal(checkpoint, examples[: 2 * batch_size], batch_size, ("token", "holistic"), desc="warm-up")
            _sync(device)
            began = time.perf_counter()
            score_causal(checkpoint, examples, batch_size, ("token", "holistic"), desc=f"eval b{batch_size}")
            seconds = time.perf_counter() - began
            return {"dtype": str(dtype).replace("torch.", ""), "batch_size": batch_size, "examples": len(examples),
                    "seconds": round(seconds, 3), "examples_per_second": round(len(examples) / seconds, 2)}

        run.say(f"eval: project path (score_causal, {str(dtype).replace('torch.', '')}, batch {batch_size})")
        result["project"][str(batch_size)] = _guarded(run, f"eval project b{batch_size}", project)
        run.say(f"eval: project b{batch_size}: {result['project'][str(batch_size)].get('examples_per_second')} ex/s")
        run.save()
    base = result["paper_style"].get("examples_per_second")
    headline = result["project"].get(str(settings.eval_batch_sizes[0]), {}).get("examples_per_second")
    if base and headline:
        result["ratio"] = round(headline / base, 2)
        result["ratio_batch_size"] = settings.eval_batch_sizes[0]
    del model, checkpoint
    _free(device)
    return result


# ------------------------------------------------------------------------------------------------ report


def _fmt(value: Any, digits: int = 2) -> str:
    return "—" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _met(flag: bool | None) -> str:
    return "—" if flag is None else ("yes" if flag else "**no**")


def stream_summary(section: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, batch, position): monitor vs HF eager, speedup, the target and whether it is met."""
    rows = []
    for shape, entry in section.get("models", {}).items():
        for batch, pair in entry.get("batches", {}).items():
            eager_rows = {r["position"]: r for r in pair.get("hf_eager", {}).get("rows", []) if "ms_per_step" in r}
            monitor_rows = [r for r in pair.get("monitor", {}).get("rows", []) if "ms_per_step" in r]
            first = monitor_rows[0]["ms_per_step"]["median"] if monitor_rows else None
            for row in monitor_rows:
                step = row["ms_per_step"]["median"]
                eager = eager_rows.get(row["position"])
                if int(batch) == 1:
                    target, value = f"<= {TARGETS['stream_ms_per_token_batch1']:g} ms/token", row["ms_per_token"]
                    met = value <= TARGETS["stream_ms_per_token_batch1"]
                elif int(batch) == 32:
                    target, met = f"<= {TARGETS['stream_ms_per_step_batch32']:g} ms/step", \
                        step <= TARGETS["stream_ms_per_step_batch32"]
                else:
                    target, met = "—", None
                rows.append({"model": shape, "batch": int(batch), "position": row["position"],
                             "monitor_ms_per_step": step, "monitor_ms_per_token": row["ms_per_token"],
                             "eager_ms_per_step": eager["ms_per_step"]["median"] if eager else None,
                             "speedup": round(eager["ms_per_step"]["median"] / step, 2) if eager else None,
                             "flatness": round(step / first, 3) if first else None,
                             "target": target, "met": met, "fast_path": entry.get("fast_path")})
    return rows


def markdown_report(report: dict[str, Any]) -> str:
    """The tables of ``bench.md``: a summary against the targets, then the detail of each section."""
    meta, sections = report.get("meta", {}), report.get("sections", {})
    tiny = " (TINY smoke run: not a measurement)" if meta.get("tiny") else ""
    lines = [f"# Benchmark of the project's code paths{tiny}",
             "", f"- device: {meta.get('device')}", f"- torch {meta.get('torch')}, transformers "
             f"{meta.get('transformers')} ({meta.get('transformers_path')}), CUDA {meta.get('cuda')}",
             f"- date: {meta.get('date')}; elapsed {meta.get('elapsed_s')} s", f"- command: `{meta.get('command')}`"]
    if meta.get("interrupted"):
        lines.append(f"- **interrupted**: {meta['interrupted']} (sections after it are missing)")
    lines += ["", "## Against the targets", "",
              "| workload | project path | baseline | ratio | target | met |",
              "| --- | ---: | ---: | ---: | --- | --- |"]
    train = sections.get("train", {})
    if train:
        ours, base = train.get("project", {}), train.get("paper_style", {})
        ratio = train.get("ratio")
        lines.append(f"| training {train.get('model')} (ex/s; paper style = padded to max length) | "
                     f"{_fmt(ours.get('examples_per_second'))} | {_fmt(base.get('examples_per_second'))} | "
                     f"{_fmt(ratio)}x | >= {TARGETS['train_ratio']:g}x | "
                     f"{_met(None if ratio is None else ratio >= TARGETS['train_ratio'])} |")
    evaluation = sections.get("eval", {})
    if evaluation:
        ratio = evaluation.get("ratio")
        size = evaluation.get("ratio_batch_size")
        ours = evaluation.get("project", {}).get(str(size), {}) if size else {}
        lines.append(f"| evaluation {evaluation.get('model')} (ex/s, batch {size}; paper style = fp32 padded) | "
                     f"{_fmt(ours.get('examples_per_second'))} | "
                     f"{_fmt(evaluation.get('paper_style', {}).get('examples_per_second'))} | {_fmt(ratio)}x | "
                     f">= {TARGETS['eval_ratio']:g}x | "
                     f"{_met(None if ratio is None else ratio >= TARGETS['eval_ratio'])} |")
    stream_rows = stream_summary(sections.get("stream", {}))
    for row in stream_rows:
        unit = "ms/token" if row["batch"] == 1 else "ms/step"
        value = row["monitor_ms_per_token"] if row["batch"] == 1 else row["monitor_ms_per_step"]
        eager = None if row["eager_ms_per_step"] is None else (
            row["eager_ms_per_step"] / row["batch"] if row["batch"] == 1 else row["eager_ms_per_step"])
        lines.append(f"| streaming {row['model']} batch {row['batch']} @ {row['position']} ({unit}; baseline HF "
                     f"eager) | {_fmt(value, 3)} | {_fmt(eager, 3)} | {_fmt(row['speedup'])}x | {row['target']} | "
                     f"{_met(row['met'])} |")
    by_model: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in stream_rows:
        by_model.setdefault((row["model"], row["batch"]), []).append(row)
    for (shape, batch), rows in by_model.items():
        if len(rows) > 1:
            flat = rows[-1]["flatness"]
            judged = batch == 1 and flat is not None
            target = f"<= {TARGETS['stream_flatness']:g}" if batch == 1 else "info (KV reads grow with position)"
            lines.append(f"| streaming {shape} batch {batch}: step time at {rows[-1]['position']} / at "
                         f"{rows[0]['position']} | {_fmt(flat, 3)} | | | {target} | "
                         f"{_met(flat <= TARGETS['stream_flatness'] if judged else None)} |")
    answers = sections.get("answers", {})
    for name, entry in answers.get("by_dtype", {}).items():
        if "max_abs_diff_fast_vs_eager_runtime" in entry:
            diff = max(entry["max_abs_diff_fast_vs_eager_runtime"].values())
            lines.append(f"| same answers {name}: fast path ({entry['fast_path']}) vs eager runtime | max abs diff "
                         f"{diff:.2e}; decisions {entry['decisions_equal']}/{entry['decisions_total']} equal "
                         f"({entry['decisions_unexplained']} beyond noise); live rule "
                         f"{'equal' if entry['live_rule']['equal'] else 'DIFFERENT'} | | | diff <= "
                         f"{entry['tolerance']:g}; decisions equal unless a score is within noise of theta | "
                         f"{_met(entry['pass'])} |")
    for name, section in sections.items():
        if "error" in section:
            lines.append(f"| section {name} | FAILED: {section['error']} | | | | **no** |")
    if stream_rows:
        lines += ["", "## Streaming detail (medians)", "",
                  "| model | batch | position | fast path | monitor ms/step | monitor ms/token | HF eager ms/step | "
                  "speedup |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        for row in stream_rows:
            lines.append(f"| {row['model']} | {row['batch']} | {row['position']} | {row['fast_path']} | "
                         f"{_fmt(row['monitor_ms_per_step'], 3)} | {_fmt(row['monitor_ms_per_token'], 3)} | "
                         f"{_fmt(row['eager_ms_per_step'], 3)} | {_fmt(row['speedup'])}x |")
    for name in ("train", "eval"):
        section = sections.get(name)
        if section:
            lines += ["", f"## {name} detail", "", "```json", _compact_json(section), "```"]
    return "\n".join(lines) + "\n"


def _compact_json(obj: Any) -> str:
    import json

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "traceback"}
        return value

    return json.dumps(strip(obj), indent=1)


def machine_facts(device: torch.device) -> dict[str, Any]:
    """Device name and memory, versions, date: what the numbers depend on."""
    facts: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "transformers_path": str(Path(transformers.__file__).parent), "python": platform.python_version(),
        "platform": platform.platform(), "cuda": torch.version.cuda, "device": "cpu",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(device=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                     gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    else:
        facts["threads"] = torch.get_num_threads()
    return facts


SECTION_RUNNERS: dict[str, Callable[[Run, Settings, Deadline], dict[str, Any]]] = {
    "answers": bench_answers, "stream": bench_stream, "train": bench_train, "eval": bench_eval}


def main(args: BenchArguments, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the selected sections in order, saving the report after each; returns the report.

    Raises:
        ValueError: bad flags, or a full run without a CUDA GPU.
    """
    settings = resolve_settings(args)
    run = Run(Path(args.out), args.tiny)
    budgets = {"answers": args.answers_budget_s, "stream": args.stream_budget_s, "train": args.train_budget_s,
               "eval": args.eval_budget_s}
    run.report["meta"] = {**machine_facts(settings.device), "tiny": args.tiny,
                          "command": " ".join(["python -m bench.benchmark",
                                               *(argv if argv is not None else sys.argv[1:])]),
                          "settings": asdict(settings.args), "targets": TARGETS, "budgets_s": budgets}
    previous_handler = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise _Interrupted("SIGTERM (the run-bench.sh timeout)")

    signal.signal(signal.SIGTERM, on_term)
    previous_threads = torch.get_num_threads()
    if args.tiny:
        # Tiny models gain nothing from threads, and oversubscribed threads on a shared CPU cost 10x.
        torch.set_num_threads(1)
    try:
        run.say(f"device {run.report['meta']['device']}; torch {torch.__version__}; transformers "
                f"{transformers.__version__}; sections {settings.sections}")
        run.save()
        for name in SECTIONS:
            if name not in settings.sections:
                continue
            deadline = Deadline(budgets[name])
            began = time.perf_counter()
            run.say(f"== {name} (budget {budgets[name]:g} s)")
            run.report["sections"][name] = _guarded(run, name, lambda: SECTION_RUNNERS[name](run, settings, deadline))
            run.report["sections"][name]["seconds"] = round(time.perf_counter() - began, 1)
            run.save()
        run.say(f"done; wrote {run.out / 'bench.json'} and {run.out / 'bench.md'}")
    except _Interrupted as err:
        run.report["meta"]["interrupted"] = str(err)
        run.say(f"interrupted: {err}; saved what was measured")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        torch.set_num_threads(previous_threads)
        run.save()
        run.close()
    return run.report


if __name__ == "__main__":
    report = run_entry_point(main, BenchArguments, "python -m bench.benchmark")
    sys.exit(124 if report["meta"].get("interrupted") else 0)
