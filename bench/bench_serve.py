"""Benchmark of the gateway: what the monitor costs per token when 1, 8, 32 and 64 streams go through it at once.

Three processes on loopback: the scripted upstream (``test/scripted_upstream.py``: canned text, one word per delta,
``--deltas-per-second`` per stream), the gateway in proxy mode (``python -m serve.gateway``, ``--stats-file``) and
this client, which opens N concurrent streaming chat requests and reads them to the end. The gateway records every
monitor step (duration, streams, tokens) and, for every upstream delta, the latency the monitor added (from the
delta's arrival to the end of the step that scored it); it writes them when it stops. Per level:

- monitor cost per token = total step time / tokens scored (the compute the monitor spends per token);
- tokens/s = tokens scored / the span from the first step's start to the last step's end;
- batch sizes: streams and tokens per step (mean and max);
- added latency p50/p99 over all deltas.

The baseline is the same N streams with ``--max-batch-streams 1`` (one forward per stream: unbatched); the target is
a cost per token at 32 streams at least 8x below that baseline's. The monitor is an SCM over the embedded
SmolLM2-135M with random heads (the heads do not change the cost) and a rule that never stops. ``--tiny`` uses a tiny
random monitor and a few streams: a smoke test of the benchmark itself (seconds), not a measurement.

Commands::

    bash scripts/run-serve-bench.sh                                   # writes results/serve-bench/
    python -m bench.bench_serve --levels 1,8,32,64 --baseline-levels 32 --deltas-per-second 10 --response-words 100
    python -m bench.bench_serve --tiny --output-dir /tmp/serve-bench-tiny
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import torch
import transformers

from bench.bench_streaming import _int_list, machine_info
from utils.cli import require_at_least, require_positive, run_entry_point
from utils.io_utils import atomic_write, read_json, write_json

NEVER = 10**9  # a k no stream reaches: the benchmark never stops a stream
TARGET_LEVEL, TARGET_SPEEDUP = 32, 8.0


@dataclass
class ServeBenchArguments:
    """Flags of ``python -m bench.bench_serve``."""

    output_dir: str = field(default="results/serve-bench", metadata={"help": "Where the JSON and table go."})
    levels: str = field(default="1,8,32,64", metadata={"help": "Comma-separated numbers of concurrent streams."})
    baseline_levels: str = field(default="32", metadata={
        "help": "Levels also run unbatched (--max-batch-streams 1) as the baseline."})
    deltas_per_second: float = field(default=10.0, metadata={"help": "Upstream deltas (words) per second per stream."})
    response_words: int = field(default=100, metadata={"help": "Words per response."})
    backbone: str | None = field(default=None, metadata={
        "help": "Causal LM folder for the monitor's backbone (default: the embedded SmolLM2-135M-Instruct)."})
    threads: int = field(default=1, metadata={
        "help": "torch threads of the gateway process (0: torch's choice; the upstream and this client share the "
                "CPU with it)."})
    tiny: bool = field(default=False, metadata={"help": "Tiny random monitor, few streams: a smoke test."})
    startup_timeout: float = field(default=180.0, metadata={"help": "Seconds to wait for a server to start."})


def check_args(args: ServeBenchArguments) -> tuple[list[int], list[int]]:
    """Validate the flags; returns the levels and the baseline levels.

    Raises:
        ValueError: naming the flag.
    """
    levels = _int_list(args.levels, "--levels")
    baseline = _int_list(args.baseline_levels, "--baseline-levels") if args.baseline_levels else []
    require_positive(args, "deltas_per_second")
    require_at_least(args, 1, "response_words")
    return levels, baseline


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_checkpoint(args: ServeBenchArguments, folder: Path) -> str:
    """Save the monitor to benchmark as a checkpoint folder; returns its description."""
    from model.modeling_qwen4dual_2CE_w_logic import SCMModel
    from transformers import AutoTokenizer

    from tests.tiny_checkpoints import build_tiny_scm
    from model.assets import smollm2_path

    if args.tiny:
        build_tiny_scm(folder, smollm2_path(), max_position_embeddings=2048)
        return "tiny random SCM (2 layers, 32 wide)"
    path = args.backbone or str(smollm2_path())
    SCMModel.from_backbone(path, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return f"SCM over {Path(path).name} (random heads)"


def _start(command: list[str], port: int, timeout: float, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(command[:3])} exited early; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{' '.join(command[:3])} did not start within {timeout} s; see {log}")


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _client(url: str, streams: int) -> dict[str, Any]:
    async def one(client: httpx.AsyncClient, number: int) -> dict[str, float]:
        body = {"model": "bench", "stream": True,
                "messages": [{"role": "user", "content": f"Benchmark request {number}: describe something."}]}
        began = time.perf_counter()
        first, chars = None, 0
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"stream {number}: HTTP {response.status_code}: {await response.aread()!r}")
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"content":"' in line:
                    chunk = json.loads(line[5:])
                    text = chunk["choices"][0]["delta"].get("content") or ""
                    if text and first is None:
                        first = time.perf_counter() - began
                    chars += len(text)
        return {"first_text_s": first or 0.0, "total_s": time.perf_counter() - began, "chars": chars}

    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        began = time.perf_counter()
        results = await asyncio.gather(*(one(client, n) for n in range(streams)))
        return {"wall_s": time.perf_counter() - began, "streams": results}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarise(stats: dict[str, Any], client: dict[str, Any], streams: int, batched: bool) -> dict[str, Any]:
    """One row of the table from the gateway's step log and the client's timings."""
    steps = stats["steps"]
    tokens = sum(s["tokens"] for s in steps)
    busy = sum(s["seconds"] for s in steps)
    span = max(s["t"] + s["seconds"] for s in steps) - min(s["t"] for s in steps)
    latencies = stats["latencies_s"]
    return {
        "streams": streams, "batched": batched, "steps": len(steps), "tokens_scored": tokens,
        "monitor_ms_per_token": 1000 * busy / tokens, "tokens_per_s": tokens / span,
        "monitor_busy_share": busy / span,
        "mean_streams_per_step": statistics.mean(s["streams"] for s in steps),
        "max_streams_per_step": max(s["streams"] for s in steps),
        "mean_tokens_per_step": tokens / len(steps), "max_tokens_per_step": max(s["tokens"] for s in steps),
        "added_latency_p50_ms": 1000 * _percentile(latencies, 50),
        "added_latency_p99_ms": 1000 * _percentile(latencies, 99),
        "client_wall_s": client["wall_s"],
        "client_first_text_p50_s": statistics.median(r["first_text_s"] for r in client["streams"]),
        "chars_received": sum(r["chars"] for r in client["streams"]),
    }


def run_level(args: ServeBenchArguments, checkpoint: Path, upstream_url: str, streams: int, batched: bool,
              workdir: Path) -> dict[str, Any]:
    """Start a gateway, push ``streams`` concurrent streams through it, stop it, summarise its step log."""
    port = _free_port()
    stats_file = workdir / f"stats-{streams}-{'batched' if batched else 'unbatched'}.json"
    command = [sys.executable, "-m", "serve.gateway", "--model-path", str(checkpoint), "--upstream", upstream_url,
               "--port", str(port), "--k", str(NEVER), "--max-streams", str(max(streams, 1)),
               "--max-batch-streams", str(streams if batched else 1), "--stats-file", str(stats_file),
               "--log-level", "warning", "--device", "cpu", "--threads", str(args.threads)]
    gateway = _start(command, port, args.startup_timeout, workdir / f"gateway-{streams}-{batched}.log")
    try:
        client = asyncio.run(_client(f"http://127.0.0.1:{port}", streams))
    finally:
        _stop(gateway)
    return summarise(read_json(stats_file), client, streams, batched)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = ["| streams | batched | monitor ms/token | tokens/s | streams/step (mean, max) | tokens/step (mean, max) "
             "| added latency p50 / p99 ms |", "| ---: | :---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['streams']} | {'yes' if r['batched'] else 'no'} | {r['monitor_ms_per_token']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {r['mean_streams_per_step']:.1f}, {r['max_streams_per_step']} | "
                     f"{r['mean_tokens_per_step']:.1f}, {r['max_tokens_per_step']} | "
                     f"{r['added_latency_p50_ms']:.0f} / {r['added_latency_p99_ms']:.0f} |")
    return "\n".join(lines)


def main(args: ServeBenchArguments) -> dict[str, Any]:
    """Run every level (and the baselines), write the JSON and the table; returns the report.

    Raises:
        ValueError: bad flags. RuntimeError: a server failed to start (its log is named).
    """
    levels, baseline_levels = check_args(args)
    if args.tiny:
        levels, baseline_levels = [min(v, 4) for v in levels[:2]], [min(v, 4) for v in baseline_levels[:1]]
    load = os.getloadavg()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scm-serve-bench-") as tmp:
        workdir = Path(tmp)
        description = build_checkpoint(args, workdir / "monitor")
        upstream_port = _free_port()
        upstream = _start([sys.executable, "-m", "test.scripted_upstream", "--port", str(upstream_port),
                           "--deltas-per-second", str(args.deltas_per_second),
                           "--response-words", str(args.response_words)], upstream_port, args.startup_timeout,
                          workdir / "upstream.log")
        try:
            url = f"http://127.0.0.1:{upstream_port}/v1"
            rows = [run_level(args, workdir / "monitor", url, n, True, workdir) for n in levels]
            rows += [run_level(args, workdir / "monitor", url, n, False, workdir) for n in baseline_levels]
        finally:
            _stop(upstream)
    table = markdown_table(rows)
    target = None
    batched = {r["streams"]: r for r in rows if r["batched"]}
    unbatched = {r["streams"]: r for r in rows if not r["batched"]}
    if TARGET_LEVEL in batched and TARGET_LEVEL in unbatched:
        ratio = unbatched[TARGET_LEVEL]["monitor_ms_per_token"] / batched[TARGET_LEVEL]["monitor_ms_per_token"]
        target = {"streams": TARGET_LEVEL, "min_ratio": TARGET_SPEEDUP, "ratio": ratio, "met": ratio >= TARGET_SPEEDUP}
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "monitor": description, "tiny": args.tiny,
        "device": "cpu", "dtype": "float32", "threads": args.threads, "machine": machine_info(),
        "load_average_at_start": [round(v, 2) for v in load], "load_average_at_end": [round(v, 2) for v in
                                                                                      os.getloadavg()],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "settings": asdict(args), "seconds": round(time.perf_counter() - began, 1), "results": rows,
        "target": target,
    }
    stem = "serve-bench-tiny" if args.tiny else "serve-bench"
    write_json(Path(args.output_dir) / f"{stem}.json", report)
    with atomic_write(Path(args.output_dir) / f"{stem}.md") as handle:
        handle.write(f"{description}, fp32, CPU ({report['machine'].get('cpu_model')}), {report['threads']} threads, "
                     f"torch {torch.__version__}, transformers {transformers.__version__}, {report['date']}; "
                     f"{args.deltas_per_second:g} deltas/s per stream, {args.response_words} words per response; "
                     f"load average at start {load[0]:.2f}\n\n{table}\n")
    print(table)
    if target is not None:
        verdict = "met" if target["met"] else "NOT met"
        print(f"\nmonitor cost per token at {TARGET_LEVEL} streams: {target['ratio']:.1f}x lower batched than "
              f"unbatched (target >= {TARGET_SPEEDUP:g}x): {verdict}")
    return report


if __name__ == "__main__":
    run_entry_point(main, ServeBenchArguments, "python -m bench.bench_serve")
