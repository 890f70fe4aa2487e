"""Two stress scenarios of the streaming runtime (issue 11): KV memory under random batching, and the text guard's
cost on one long unbroken word.

- **memory**: ``--streams`` streams (400: ``start_many`` batches of 40 prompts of 5-60 tokens) are pushed in random
  subsets for 60 rounds (each round every stream but the first joins with a probability drawn from 5/20/50/90%, and
  gets 1-3 tokens); the first stream stays idle. Reported: the KV bytes the open streams need (their lengths times the bytes
  of one token), the bytes all slabs hold, the number of slabs, and the slab that holds the idle stream. The
  backbone has SmolLM2-135M's KV shape per layer (3 KV heads of 64 dimensions, fp32) with ``--layers`` layers and a
  tiny MLP, so the bytes scale with the real model's while the pushes stay cheap.
- **long word**: a tiny random monitor over SmolLM2's tokenizer; for each length in ``--lengths`` one unbroken word
  (``abcdefghij`` repeated) is fed to a text guard one character at a time, then finished; the wall time of the
  whole stream is reported.

Commands::

    python -m bench.bench_guard --output-dir results/guard-cpu
    python -m bench.bench_guard --output-dir /tmp/guard-bench --layers 2 --lengths 200,400   # seconds

Outputs: ``<output-dir>/guard-bench.json`` (machine, versions, date, settings, every number) and
``<output-dir>/guard-bench.md`` (the tables, also printed).
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig

from model.modeling_qwen4dual_2CE_w_logic import SCMConfig, SCMModel
from serve.monitor import StreamingMonitor
from serve.text_guard import TextStreamGuard
from bench.bench_streaming import machine_info
from utils.cli import require_at_least, run_entry_point
from utils.decision_rules import DelayK
from utils.io_utils import atomic_write, write_json

NEVER = 10**9
MB = 1e6


@dataclass
class GuardBenchArguments:
    """Flags of ``python -m bench.bench_guard``."""

    output_dir: str = field(default="results/guard-cpu", metadata={"help": "Where the JSON and tables go."})
    layers: int = field(default=4, metadata={"help": "Backbone layers of the memory scenario (SmolLM2 has 30)."})
    streams: int = field(default=400, metadata={"help": "Streams of the memory scenario (started 40 at a time)."})
    rounds: int = field(default=60, metadata={"help": "Random pushes of the memory scenario."})
    lengths: str = field(default="1000,2000,4000,8000", metadata={"help": "Word lengths of the long-word scenario."})
    threads: int = field(default=1, metadata={"help": "torch threads."})


def memory_scenario(layers: int, rounds: int, streams: int = 400) -> dict[str, Any]:
    """The memory scenario (module docstring); returns what it measured."""
    config = LlamaConfig(vocab_size=512, hidden_size=192, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=3, num_key_value_heads=3, head_dim=64, max_position_embeddings=4096)
    torch.manual_seed(0)
    monitor = StreamingMonitor(SCMModel(SCMConfig(backbone_config=config.to_dict())).eval(), rule=DelayK(NEVER))
    rng = random.Random(0)
    states = []
    for first in range(0, streams, 40):
        states += monitor.start_many(prompt_ids=[[rng.randrange(512) for _ in range(rng.randint(5, 60))]
                                                 for _ in range(min(40, streams - first))])
    idle = states[0]
    began = time.perf_counter()
    for _ in range(rounds):
        subset = [s for s in states[1:] if rng.random() < rng.choice([0.05, 0.2, 0.5, 0.9])]
        if subset:
            monitor.push_many(subset, [[rng.randrange(512) for _ in range(rng.randint(1, 3))] for _ in subset])
    stats = monitor.memory_stats()
    return {"open_streams": stats["open_streams"], "slabs": stats["slabs"], "rows": stats["rows"],
            "kv_mb_needed": round(stats["kv_bytes_needed"] / MB, 1),
            "kv_mb_held": round(stats["kv_bytes_held"] / MB, 1),
            "idle_stream_slab_mb": round(idle._slab.nbytes() / MB, 1), "idle_stream_slab_rows": idle._slab.n_rows,
            "push_seconds": round(time.perf_counter() - began, 1)}


def long_word_scenario(lengths: list[int]) -> list[dict[str, Any]]:
    """The long-word scenario (module docstring); returns one row per length."""
    from model.assets import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    backbone = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2 * max(lengths))
    model = SCMModel(SCMConfig(backbone_config=backbone.to_dict())).eval()
    monitor = StreamingMonitor(model, tokenizer, rule=DelayK(NEVER))
    TextStreamGuard(monitor, "warm-up").finish()
    rows = []
    for length in lengths:
        word = ("abcdefghij" * length)[:length]
        guard = TextStreamGuard(monitor, "p")
        began = time.perf_counter()
        for char in word:
            guard.feed(char)
        guard.finish()
        seconds = time.perf_counter() - began
        rows.append({"characters": length, "seconds": round(seconds, 2),
                     "us_per_character": round(seconds / length * 1e6),
                     "tokens_scored": guard.state.n_response_tokens, "released_all": guard.released_text == word})
    return rows


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"--lengths takes comma-separated positive integers, got {text!r}")
    return values


def main(args: GuardBenchArguments) -> dict[str, Any]:
    """Run both scenarios, write the JSON and the tables; returns the report.

    Raises:
        ValueError: bad flags.
    """
    lengths = _int_list(args.lengths)
    require_at_least(args, 1, "layers", "rounds", "threads")
    require_at_least(args, 2, "streams")
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        memory = memory_scenario(args.layers, args.rounds, args.streams)
        words = long_word_scenario(lengths)
    finally:
        torch.set_num_threads(previous)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "settings": asdict(args), "memory": memory, "long_word": words}
    table = "\n".join([
        f"memory ({args.layers} layers of SmolLM2's KV shape, fp32, {args.streams} streams, {args.rounds} random "
        f"pushes)",
        "", "| open streams | KV needed MB | KV held MB | slabs | rows | idle stream's slab MB (rows) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {memory['open_streams']} | {memory['kv_mb_needed']} | {memory['kv_mb_held']} | {memory['slabs']} | "
        f"{memory['rows']} | {memory['idle_stream_slab_mb']} ({memory['idle_stream_slab_rows']}) |", "",
        f"long word fed one character at a time (tiny monitor, SmolLM2 tokenizer, {args.threads} thread)", "",
        "| characters | seconds | us per character |", "| ---: | ---: | ---: |",
        *[f"| {row['characters']} | {row['seconds']} | {row['us_per_character']} |" for row in words]])
    write_json(Path(args.output_dir) / "guard-bench.json", report)
    with atomic_write(Path(args.output_dir) / "guard-bench.md") as handle:
        handle.write(f"{report['machine'].get('cpu_model')}, torch {torch.__version__}, {report['date']}\n\n{table}\n")
    print(table)
    return report


if __name__ == "__main__":
    run_entry_point(main, GuardBenchArguments, "python -m bench.bench_guard")
