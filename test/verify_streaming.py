"""Verify the streaming runtime against the offline partial evaluation: same scores, same stop positions.

Every example of a processed split is cut into its prompt (``input_ids[:response_start]``, BOS included) and its
response (``input_ids[response_start:response_end]``; the appended EOS is not part of the response, see
``meta.json``'s ``eos_appended``). Streams are started ``--batch-streams`` at a time with one batched prompt
forward, then advanced together by ``push_many`` in random-sized chunks (0..``--max-chunk`` tokens per stream and
push, so streams also sit idle, seeded by ``--seed``) until each stream ends or the decision rule stops it. The
reference is one full causal forward over prompt + response per example. The run fails (exit status 1) when a
score of either head differs by more than ``--tolerance`` or a stop position differs; a stop difference caused by
a score within ``--tolerance`` of theta is reported as borderline and does not fail the run.

Commands::

    python -m test.verify_streaming --model-path runs/scm-default --data-dir .cache/data/sample-smollm2-135m-instruct
    python -m test.verify_streaming --model-path CKPT --data-dir scm --split test --limit 200 --batch-streams 8 \
        --output-dir metrics/scm-0.5b
    bash scripts/run-scm.sh test --model-path CKPT --data-dir scm --output-dir metrics/scm --verify-streaming

The evaluation flags that ``scripts/run-scm.sh`` forwards (``--splits``, ``--max-length``, ``--device``,
``--dtype``, ``--batch-size``, ``--thresholds``, ``--max-k``, ``--attn-implementation``) are accepted; ``--splits``
overrides ``--split``. Output: the report is printed and, with ``--output-dir``, written to
``<output-dir>/streaming-verification-<split>.json`` (or to ``--output-file``).
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from serve.monitor import StreamingMonitor, score_offline
from utils.cli import require_at_least, require_positive, run_entry_point
from utils.io_utils import DataFormatError, write_json
from utils.data.processed_data import check_vocabulary, load_meta, load_split, split_path

SPLITS = ("train", "val", "test")


@dataclass
class VerifyArguments:
    """Flags of ``python -m test.verify_streaming``."""

    model_path: str = field(metadata={"help": "SCM checkpoint folder (config.json + weights + tokenizer)."})
    data_dir: str = field(metadata={"help": "Processed data folder (from scripts/run-data.sh) for that tokenizer."})
    split: str = field(default="test", metadata={"help": "Split to verify.", "choices": list(SPLITS)})
    splits: str | None = field(default=None, metadata={
        "help": "Comma-separated splits (overrides --split; what scripts/run-scm.sh forwards)."})
    limit: int | None = field(default=None, metadata={"help": "Verify only the first N examples of each split."})
    batch_streams: int = field(default=8, metadata={"help": "Streams advanced together by one push_many."})
    max_chunk: int = field(default=8, metadata={"help": "Largest number of tokens pushed into a stream at once."})
    seed: int = field(default=0, metadata={"help": "Seed of the random chunk sizes."})
    tolerance: float = field(default=1e-4, metadata={"help": "Largest allowed score difference (fp32)."})
    theta: float | None = field(default=None, metadata={"help": "Threshold (default: the checkpoint's)."})
    k: int | None = field(default=None, metadata={"help": "k of delay-k / n of consecutive-n (default: checkpoint)."})
    rule: str = field(default="delay-k", metadata={"help": "Decision rule.", "choices": ["delay-k", "consecutive-n"]})
    scorer: str | None = field(default=None, metadata={"help": "token or holistic (default: the checkpoint's)."})
    max_length: int | None = field(default=None, metadata={
        "help": "Truncate examples to this many tokens (default: the model's maximum length)."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:1."})
    dtype: str = field(default="auto", metadata={
        "help": "auto = fp32 (the tolerance is an fp32 tolerance); bf16/fp16 need a larger --tolerance."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Write <output-dir>/streaming-verification-<split>.json."})
    output_file: str | None = field(default=None, metadata={
        "help": "Write the JSON report (all splits) here instead of into --output-dir."})
    batch_size: int | None = field(default=None, metadata={"help": "Accepted from scripts/run-scm.sh; not used."})
    thresholds: str | None = field(default=None, metadata={"help": "Accepted from scripts/run-scm.sh; not used."})
    max_k: int | None = field(default=None, metadata={"help": "Accepted from scripts/run-scm.sh; not used."})


def check_args(args: VerifyArguments) -> list[str]:
    """Validate the flags; returns the splits to verify.

    Raises:
        ValueError: naming the flag and an accepted value.
    """
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else [args.split]
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"--splits: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    require_at_least(args, 1, "batch_streams", "max_chunk")
    require_at_least(args, 1, "limit", hint="or left out for the whole split")
    require_positive(args, "tolerance")
    require_at_least(args, 2, "max_length")
    return splits


def _device_and_dtype(args: VerifyArguments) -> tuple[str, str]:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = "float32" if args.dtype == "auto" else args.dtype
    return device, dtype


def response_bounds(record: dict, path: Path, line: int, eos_appended: bool, max_length: int) -> tuple[int, int]:
    """``(response_start, response_end)`` of a processed record, after truncation to ``max_length``.

    Raises:
        DataFormatError: a missing or out-of-range ``response_start``.
    """
    ids = record["input_ids"]
    start = record.get("response_start")
    if isinstance(start, bool) or not isinstance(start, int):
        raise DataFormatError(f"{path}, line {line}: field 'response_start' is missing or not an integer; re-run "
                              f"scripts/run-data.sh to regenerate the data")
    end = len(ids) - 1 if eos_appended else len(ids)
    if not 1 <= start <= end:
        raise DataFormatError(f"{path}, line {line}: 'response_start' = {start} is outside [1, {end}] (the prompt "
                              f"must hold at least one token); re-run scripts/run-data.sh")
    return start, min(end, max_length)


def _eos_appended(data_dir: str, records: list[dict], tokenizer) -> bool:
    meta = load_meta(data_dir)
    if "eos_appended" in meta:
        return bool(meta["eos_appended"])
    # Hand-made folders without meta.json: trust the tokenizer's EOS at the end of every record.
    eos = getattr(tokenizer, "eos_token_id", None)
    return eos is not None and all(r["input_ids"][-1] == eos for r in records)


def _compare_stops(index: int, streamed: int | None, offline: int | None, offline_scores: list[float],
                   theta: float, tolerance: float) -> tuple[str, dict] | None:
    if streamed == offline:
        return None
    horizon = len(offline_scores) if streamed is None or offline is None else max(streamed, offline) + 1
    near = [i for i, s in enumerate(offline_scores[:horizon]) if abs(s - theta) <= tolerance]
    entry = {"example": index, "streamed_stop": streamed, "offline_stop": offline, "scores_near_theta": near}
    return ("borderline" if near else "mismatch"), entry


def verify_split(monitor: StreamingMonitor, args: VerifyArguments, split: str) -> dict[str, Any]:
    """Stream one split through the runtime and compare with the offline forward; returns the split's report."""
    records = load_split(args.data_dir, split, args.limit)
    path = split_path(args.data_dir, split)
    check_vocabulary(records, monitor.vocab_size, args.data_dir, args.model_path)
    eos_appended = _eos_appended(args.data_dir, records, monitor.tokenizer)
    max_length = min(args.max_length or monitor.max_length, monitor.max_length)
    rng = random.Random(args.seed)
    examples = []
    for line, record in enumerate(records, start=1):
        start, end = response_bounds(record, path, line, eos_appended, max_length)
        if end > start:
            examples.append((line - 1, record["input_ids"][:start], record["input_ids"][start:end]))
    diffs = {"token": 0.0, "holistic": 0.0}
    compared = 0
    mismatches, borderline = [], []
    stops = {"streamed": 0, "offline": 0}
    for first in range(0, len(examples), args.batch_streams):
        batch = examples[first: first + args.batch_streams]
        states = monitor.start_many(prompt_ids=[prompt for _, prompt, _ in batch])
        streamed = [{"token": [], "holistic": []} for _ in batch]
        pushed = [0] * len(batch)
        while True:
            live = [i for i, state in enumerate(states) if not state.stopped and pushed[i] < len(batch[i][2])]
            if not live:
                break
            chunks = []
            for i in live:
                size = rng.randint(0, args.max_chunk)
                chunks.append(batch[i][2][pushed[i]: pushed[i] + size])
                pushed[i] += len(chunks[-1])
            for i, result in zip(live, monitor.push_many([states[i] for i in live], chunks)):
                streamed[i]["token"] += result.token_scores
                streamed[i]["holistic"] += result.holistic_scores
        for i, (index, prompt, response) in enumerate(batch):
            token, holistic = score_offline(monitor.model, torch.tensor([prompt + response]))
            offline = {"token": token[0, len(prompt):].tolist(), "holistic": holistic[0, len(prompt):].tolist()}
            n = len(streamed[i]["token"])
            compared += n
            for head in diffs:
                delta = (torch.tensor(streamed[i][head]) - torch.tensor(offline[head][:n])).abs()
                diffs[head] = max(diffs[head], delta.max().item() if n else 0.0)
            decided = offline[monitor.scorer]
            offline_stop = monitor.rule.stop_index([s >= monitor.theta for s in decided])
            streamed_stop = states[i].stop.index if states[i].stop is not None else None
            stops["streamed"] += streamed_stop is not None
            stops["offline"] += offline_stop is not None
            verdict = _compare_stops(index, streamed_stop, offline_stop, decided, monitor.theta, args.tolerance)
            if verdict is not None:
                (borderline if verdict[0] == "borderline" else mismatches).append(verdict[1])
            monitor.close(states[i])
    passed = max(diffs.values()) <= args.tolerance and not mismatches
    return {"split": split, "examples": len(examples), "tokens_compared": compared, "max_abs_diff": diffs,
            "stopped": stops, "stop_mismatches": mismatches, "borderline_stop_differences": borderline,
            "passed": passed}


def main(args: VerifyArguments) -> dict[str, Any]:
    """Run the verification; returns the report (``report["passed"]`` decides the exit status).

    Raises:
        FileNotFoundError / DataFormatError: bad checkpoint or data folder. ValueError: bad flag values.
    """
    splits = check_args(args)
    device, dtype = _device_and_dtype(args)
    began = time.perf_counter()
    monitor = StreamingMonitor.from_pretrained(args.model_path, theta=args.theta, k=args.k, rule=args.rule,
                                               scorer=args.scorer, device=device, dtype=dtype,
                                               attn_implementation=args.attn_implementation)
    reports = [verify_split(monitor, args, split) for split in splits]
    report = {
        "model_path": str(args.model_path), "data_dir": str(args.data_dir), "operating_point": monitor.describe(),
        "tolerance": args.tolerance, "batch_streams": args.batch_streams, "max_chunk": args.max_chunk,
        "seed": args.seed, "device": device, "dtype": dtype, "splits": reports,
        "passed": all(r["passed"] for r in reports), "seconds": round(time.perf_counter() - began, 2),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "arguments": asdict(args),
    }
    if args.output_file:
        write_json(args.output_file, report)
    elif args.output_dir:
        for split_report in reports:
            write_json(Path(args.output_dir) / f"streaming-verification-{split_report['split']}.json",
                       {**report, "splits": [split_report], "passed": split_report["passed"]})
    return report


def _summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for r in report["splits"]:
        lines.append(
            f"[verify_streaming] {r['split']}: {r['examples']} examples, {r['tokens_compared']} tokens; max |diff| "
            f"token {r['max_abs_diff']['token']:.2e}, holistic {r['max_abs_diff']['holistic']:.2e} (tolerance "
            f"{report['tolerance']:g}); stops streamed {r['stopped']['streamed']} / offline {r['stopped']['offline']};"
            f" mismatches {len(r['stop_mismatches'])}, borderline {len(r['borderline_stop_differences'])} -> "
            f"{'PASS' if r['passed'] else 'FAIL'}")
    return lines


if __name__ == "__main__":
    result = run_entry_point(main, VerifyArguments, "python -m test.verify_streaming",
                             errors=(ValueError, FileNotFoundError))
    print(json.dumps({k: v for k, v in result.items() if k != "arguments"}, indent=2))
    print("\n".join(_summary_lines(result)))
    sys.exit(0 if result["passed"] else 1)
