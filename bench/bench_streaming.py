"""Benchmark: per-token cost of the incremental streaming path versus re-scoring the whole prefix.

For every batch size B and prefix length L, B streams hold an L-token prefix; one *step* gives each stream one new
token. The incremental path is ``StreamingMonitor.push_many`` (KV cache reuse: the backbone runs on the B new
tokens only); the re-scoring path is one full causal forward over the B prefixes plus their new token, which is
what a monitor without a cache does for every token. Each measurement is the median over ``--steps`` steps (after
``--warmup`` untimed steps) for the incremental path and over ``--rescore-repeats`` forwards for re-scoring (after
``--rescore-warmup`` untimed ones; one untimed forward warms the process up first). Per-token cost = step time / B.

The default backbone is the embedded SmolLM2-135M-Instruct inside an SCM with random heads
(``SCMModel.from_backbone``), fp32 on the CPU; the heads do not change the cost. ``--tiny`` uses a 2-layer random
model and runs in seconds (a smoke test of the benchmark itself, not a measurement worth reporting).

Commands::

    bash scripts/run-stream-bench.sh                       # SmolLM2-135M, L = 128/512/1024, B = 1/8 (a few CPU minutes)
    python -m bench.bench_streaming --output-dir results/streaming-cpu
    python -m bench.bench_streaming --tiny --output-dir /tmp/bench-tiny
    python -m bench.bench_streaming --prefix-lengths 512 --batch-sizes 1 --threads 2

Outputs: ``<output-dir>/streaming-bench[-tiny].json`` (machine, versions, date, threads, settings, every timing)
and ``<output-dir>/streaming-bench[-tiny].md`` (the markdown table that is also printed).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import LlamaConfig

from model.modeling_qwen4dual_2CE_w_logic import SCMConfig, SCMModel
from serve.monitor import StreamingMonitor, score_offline
from utils.cli import require_at_least, run_entry_point
from utils.decision_rules import DelayK
from utils.evaluation.outputs import portable_path
from utils.io_utils import atomic_write, write_json

# A k no stream can reach: the benchmark must never stop a stream.
NEVER = 10**9
TARGET_PREFIX, TARGET_SPEEDUP = 512, 10.0


@dataclass
class BenchArguments:
    """Flags of ``python -m bench.bench_streaming``."""

    output_dir: str = field(default="results/streaming-cpu", metadata={"help": "Where the JSON and table go."})
    tiny: bool = field(default=False, metadata={"help": "A 2-layer random model: seconds, for smoke tests."})
    backbone: str | None = field(default=None, metadata={
        "help": "Causal LM folder for the SCM backbone (default: the embedded SmolLM2-135M-Instruct)."})
    prefix_lengths: str = field(default="128,512,1024", metadata={"help": "Comma-separated prefix lengths."})
    batch_sizes: str = field(default="1,8", metadata={"help": "Comma-separated numbers of concurrent streams."})
    steps: int = field(default=16, metadata={"help": "Timed incremental steps per setting (median reported)."})
    warmup: int = field(default=3, metadata={"help": "Untimed incremental steps before timing."})
    rescore_repeats: int = field(default=3, metadata={"help": "Timed re-scoring forwards per setting."})
    rescore_warmup: int = field(default=0, metadata={"help": "Untimed re-scoring forwards per setting."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager (both paths use it)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random token ids (and the tiny model)."})


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, e.g. {flag} 128,512; got {text!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"{flag} needs positive integers, got {text!r}")
    return values


def check_args(args: BenchArguments) -> tuple[list[int], list[int]]:
    """Validate the flags; returns the prefix lengths and batch sizes.

    Raises:
        ValueError: naming the flag.
    """
    lengths = _int_list(args.prefix_lengths, "--prefix-lengths")
    batches = _int_list(args.batch_sizes, "--batch-sizes")
    require_at_least(args, 1, "steps", "rescore_repeats", "threads")
    require_at_least(args, 0, "warmup", "rescore_warmup")
    return lengths, batches


def build_model(args: BenchArguments, longest: int) -> tuple[SCMModel, str]:
    """The SCM to benchmark (fp32, eval mode) and a description of it.

    Raises:
        ValueError: ``--tiny`` together with ``--backbone``.
    """
    if args.tiny:
        if args.backbone is not None:
            raise ValueError("--tiny builds its own random model; drop --backbone (or drop --tiny)")
        torch.manual_seed(args.seed)
        backbone = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=longest + 64)
        return SCMModel(SCMConfig(backbone_config=backbone.to_dict())).eval(), "tiny random Llama (2 layers, 32 wide)"
    from model.assets import smollm2_path

    path = args.backbone or str(smollm2_path())
    model = SCMModel.from_backbone(path, dtype=torch.float32, attn_implementation=args.attn_implementation)
    return model.eval(), f"SCM over {portable_path(path)} (random heads)"  # no machine's absolute path in reports


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, OS: what the timings depend on."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            total_kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
        info["memory_gib"] = round(total_kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info


def _median_ms(run: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), times


def bench_batch(monitor: StreamingMonitor, batch: int, lengths: list[int], args: BenchArguments,
                vocab: int) -> list[dict[str, Any]]:
    """All prefix lengths for one batch size: grow the same B streams from one length to the next."""
    generator = torch.Generator().manual_seed(args.seed + batch)
    per_step = args.warmup + args.steps
    total = lengths[-1] + per_step + 1
    ids = torch.randint(0, vocab, (batch, total), generator=generator)
    states = monitor.start_many(prompt_ids=[row[: lengths[0]].tolist() for row in ids])
    rows = []
    for length in lengths:
        current = states[0].length
        if length > current:
            monitor.push_many(states, [row[current:length].tolist() for row in ids])
        position = [length]

        def incremental_step() -> None:
            at = position[0]
            monitor.push_many(states, [[int(row[at])] for row in ids])
            position[0] += 1

        incremental, incremental_times = _median_ms(incremental_step, args.steps, args.warmup)
        prefix = ids[:, : length + 1]
        rescore, rescore_times = _median_ms(lambda: score_offline(monitor.model, prefix), args.rescore_repeats,
                                            args.rescore_warmup)
        rows.append({"prefix_length": length, "batch": batch,
                     "incremental_ms_per_step": incremental, "rescore_ms_per_step": rescore,
                     "incremental_ms_per_token": incremental / batch, "rescore_ms_per_token": rescore / batch,
                     "speedup": rescore / incremental,
                     "incremental_times_ms": incremental_times, "rescore_times_ms": rescore_times})
    for state in states:
        monitor.close(state)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table (medians; per-token = per step / batch)."""
    lines = ["| prefix | batch | incremental ms/step | re-score ms/step | incremental ms/token | re-score ms/token "
             "| speedup |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['prefix_length']} | {r['batch']} | {r['incremental_ms_per_step']:.2f} | "
                     f"{r['rescore_ms_per_step']:.2f} | {r['incremental_ms_per_token']:.2f} | "
                     f"{r['rescore_ms_per_token']:.2f} | {r['speedup']:.1f}x |")
    return "\n".join(lines)


def main(args: BenchArguments) -> dict[str, Any]:
    """Run the benchmark, write the JSON and the table; returns the report.

    Raises:
        ValueError: bad flags.
    """
    lengths, batches = check_args(args)
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, lengths, batches)
    finally:
        # Callers in the same process (tests) keep their own thread setting.
        torch.set_num_threads(previous_threads)


def _run(args: BenchArguments, lengths: list[int], batches: list[int]) -> dict[str, Any]:
    per_step = args.warmup + args.steps
    model, description = build_model(args, lengths[-1] + per_step + 1)
    monitor = StreamingMonitor(model, rule=DelayK(NEVER), attn_implementation=args.attn_implementation)
    vocab = monitor.vocab_size
    # Warm the process up (thread pool, allocator) before anything is timed.
    score_offline(model, torch.zeros((1, min(lengths[0], 64)), dtype=torch.long))
    began = time.perf_counter()
    rows = [row for batch in batches for row in bench_batch(monitor, batch, lengths, args, vocab)]
    table = markdown_table(rows)
    target = [r for r in rows if r["prefix_length"] == TARGET_PREFIX]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": description, "dtype": "float32", "device": "cpu", "tiny": args.tiny,
        "attn_implementation": args.attn_implementation,
        "threads": torch.get_num_threads(), "machine": machine_info(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "settings": asdict(args), "seconds": round(time.perf_counter() - began, 1), "results": rows,
        "target": {"prefix_length": TARGET_PREFIX, "min_speedup": TARGET_SPEEDUP,
                   "met": all(r["speedup"] >= TARGET_SPEEDUP for r in target) if target else None},
    }
    stem = "streaming-bench-tiny" if args.tiny else "streaming-bench"
    write_json(Path(args.output_dir) / f"{stem}.json", report)
    with atomic_write(Path(args.output_dir) / f"{stem}.md") as handle:
        handle.write(f"{description}, fp32, CPU ({report['machine'].get('cpu_model')}), {report['threads']} threads, "
                     f"torch {torch.__version__}, transformers {transformers.__version__}, {report['date']}\n\n")
        handle.write(table + "\n")
    print(table)
    if target:
        verdict = "met" if report["target"]["met"] else "NOT met"
        print(f"\ntarget (incremental >= {TARGET_SPEEDUP:g}x cheaper per token at a {TARGET_PREFIX}-token prefix): "
              f"{verdict}")
    return report


if __name__ == "__main__":
    run_entry_point(main, BenchArguments, "python -m bench.bench_streaming")
