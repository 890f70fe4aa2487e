"""Run the streaming monitor on a live generation (or on given prompt/response pairs) and report where it stops.

Generation mode: the generator (default: the embedded SmolLM2-135M-Instruct; ``--generator`` takes any HF causal
LM folder) answers ``--prompt`` through its chat template, greedily or sampled with ``--seed``. The stream is
printed as it grows, and only text the monitor has already scored is printed (hold-back). When the monitor and the
generator share a tokenizer, the generated ids go straight into the monitor through a ``StoppingCriteria`` (one
incremental monitor step per generated token, the generation stops at the monitor's stop token); otherwise the
generated text is re-tokenised by the text guard (``serve/text_guard.py``) and the generation is halted when the
guard stops. File mode (``--input FILE.jsonl``, one ``{"prompt": ..., "response": ...}`` per line) streams each
response through the text guard in chunks. Either way the report says where and why the stream stopped: response
token index, token, score, running count and the rule, and, for a checkpoint with a category head, the category
named at the stop token with its category score (``--block-categories``, ``--annotate-categories`` and
``--category-thresholds`` choose which categories stop the stream; firings the policy lets through are listed as
annotations; ``serve/category_policy.py``).

The operating point is the one the checkpoint's evaluation recorded in its ``operating_point.json`` (``bash
scripts/run-scm.sh test ...`` writes it), unless ``--theta``/``--k``/``--scorer`` or ``--operating-point`` say
otherwise; without that file, the training default with a warning. The first line printed says which and whence.

Commands::

    bash scripts/run-stream.sh --model-path runs/scm-default --prompt "How do I pick a lock?"
    python -m test.stream_monitor --model-path runs/scm-default --prompt "How do I pick a lock?" --theta 0.7 --k 3
    python -m test.stream_monitor --model-path CKPT --prompt "..." --do-sample --seed 7 --max-new-tokens 200
    python -m test.stream_monitor --model-path CKPT --prompt "..." --operating-point budget   # the false-stop budget
    python -m test.stream_monitor --model-path CKPT --prompt "..." --generator /path/to/other-causal-lm
    python -m test.stream_monitor --model-path CKPT --input pairs.jsonl --rule consecutive-n --k 2 \
        --output-file runs/stream/pairs-results.json
    python -m test.stream_monitor --model-path CKPT_WITH_CATEGORY_HEAD --prompt "..." \
        --block-categories illicit,illicit/violent,self-harm --category-thresholds illicit=0.6
"""

from __future__ import annotations

import random
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList,
                          TextIteratorStreamer)

from serve.category_policy import CategoryArguments, policy_from_args
from serve.monitor import PushResult, StreamingMonitor, StreamLengthError, resolve_dtype
from serve.generate import MonitorStoppingCriteria
from utils.cli import require_at_least, run_entry_point
from utils.io_utils import DataFormatError, read_json, read_jsonl, write_json
from serve.text_guard import STOP_NOTICE, TextStreamGuard
from serve.operating_point_args import OperatingPointArguments

SCRIPT = "python -m test.stream_monitor"


@dataclass
class StreamMonitorArguments(OperatingPointArguments, CategoryArguments):
    """Flags of ``python -m test.stream_monitor``."""

    model_path: str | None = field(default=None, metadata={
        "help": "SCM checkpoint folder (train one with `bash scripts/run-scm.sh`; the quick start writes "
                "runs/scm-default)."})
    prompt: str | None = field(default=None, metadata={"help": "Prompt to generate a monitored answer for."})
    input: str | None = field(default=None, metadata={
        "help": "JSONL of {\"prompt\", \"response\"} pairs to monitor instead of generating."})
    generator: str | None = field(default=None, metadata={
        "help": "HF causal LM folder to generate with (default: the embedded SmolLM2-135M-Instruct)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation length limit."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with --do-sample)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass (with --do-sample)."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling and for --input chunk sizes."})
    hold_back: bool = field(default=True, metadata={
        "help": "Text-guard path: release only scored text (default). --no-hold-back releases text on arrival."})
    chunk_chars: int = field(default=0, metadata={
        "help": "--input: characters per streamed chunk; 0 = random chunks of 1-8 characters."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:1."})
    dtype: str | None = field(default=None, metadata={
        "help": "float32, bfloat16, float16 (default: the checkpoint's)."})
    output_file: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})
    quiet: bool = field(default=False, metadata={"help": "Print only the report, not the stream."})


def check_args(args: StreamMonitorArguments) -> None:
    """Validate the flags.

    Raises:
        ValueError: naming the flag and what to pass.
    """
    if not args.model_path:
        raise ValueError("--model-path is required: an SCM checkpoint folder (train one with "
                         "`bash scripts/run-scm.sh`; the quick start writes runs/scm-default)")
    if (args.prompt is None) == (args.input is None):
        raise ValueError("pass exactly one of --prompt TEXT (generate and monitor) or --input FILE.jsonl "
                         "(monitor given prompt/response pairs)")
    require_at_least(args, 1, "max_new_tokens")
    require_at_least(args, 0, "chunk_chars", hint="0 = random chunk sizes")
    if args.do_sample and not (args.temperature > 0 and 0 < args.top_p <= 1):
        raise ValueError("--temperature must be > 0 and --top-p in (0, 1] when sampling")
    if args.input is not None and not Path(args.input).is_file():
        raise ValueError(f"--input {args.input}: file not found (a relative path is taken from the current folder, "
                         f"{Path.cwd().name}/)")
    if args.generator is not None and not (Path(args.generator) / "config.json").is_file():
        what = "is not a folder" if not Path(args.generator).is_dir() else "holds no config.json"
        raise ValueError(f"--generator {args.generator} {what}: pass a Hugging Face causal LM folder (config.json, "
                         f"weights, tokenizer), or leave --generator out to use the embedded SmolLM2-135M-Instruct")
    if args.output_file is not None:
        output = Path(args.output_file)
        if output.is_dir():
            raise ValueError(f"--output-file {args.output_file} is a folder; name a file, e.g. "
                             f"{output / 'stream-results.json'}")
        blocking = next((parent for parent in output.parents if parent.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ValueError(f"--output-file {args.output_file}: {blocking} is a file, so no folder can be made there")
    check_device(args.device)


def check_device(name: str) -> None:
    """Refuse a device that does not exist here before anything is loaded.

    Raises:
        ValueError: an unknown device name, or a CUDA device without a visible GPU.
    """
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is visible here (torch {torch.__version__}, "
                             f"torch.cuda.is_available() is False); use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible; use "
                             f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def same_tokenizer(first, second) -> bool:
    """Whether two tokenizers map text to the same ids (same vocabulary and added tokens)."""
    return first.get_vocab() == second.get_vocab()


def chat_inputs(tokenizer, prompt: str, device: str) -> dict[str, torch.Tensor]:
    """The generator's input for ``prompt``: its chat template with a generation prompt, else the raw text."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
    else:
        encoded = tokenizer(prompt, return_tensors="pt")
    return {name: tensor.to(device) for name, tensor in encoded.items()}


class _IncrementalPrinter:
    """Print token ids as text as they are approved, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer, out: TextIO, enabled: bool) -> None:
        self.tokenizer, self.out, self.enabled = tokenizer, out, enabled
        self.ids: list[int] = []
        self.shown = ""

    def add(self, ids: list[int], final: bool = False) -> None:
        self.ids += ids
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if self.enabled and text.startswith(self.shown):
            self.out.write(text[len(self.shown):])
            self.out.flush()
        self.shown = text


def _pad_id(generator, tokenizer) -> int | None:
    pad = generator.generation_config.pad_token_id
    return tokenizer.pad_token_id if pad is None else pad


def _stop_record(stop, token_text: str, char_start: int | None = None) -> dict[str, Any]:
    record = {"index": stop.index, "token_id": stop.token_id, "token_text": token_text, "score": stop.score,
              "count": stop.count, "rule": stop.rule, "theta": stop.theta, "scorer": stop.scorer}
    if char_start is not None:
        record["char_start"] = char_start
    if stop.category is not None:  # a checkpoint with a category head
        record.update(category=stop.category, category_score=stop.category_scores[stop.category],
                      category_scores=stop.category_scores)
    return record


def _annotations(state) -> list[dict[str, Any]]:
    """The firings of the rule the category policy let through (empty without a category head)."""
    return [annotation.public() for annotation in state.annotations]


def _max_score(results: list[PushResult]) -> float | None:
    scores = [s for r in results for s in r.scores]
    return max(scores) if scores else None


def generate_with_criteria(monitor, generator, tokenizer, args, out: TextIO) -> dict[str, Any]:
    """Shared tokenizer: push generated ids through :class:`MonitorStoppingCriteria`; print approved tokens."""
    device = str(generator.device)
    inputs = chat_inputs(tokenizer, args.prompt, device)
    state = _start_prompt(monitor, args.prompt)
    printer = _IncrementalPrinter(tokenizer, out, not args.quiet)

    def show(row: int, ids: list[int], result: PushResult) -> None:
        if result.stopped:
            # Show the tokens scored before the stop token, never the stop token itself.
            ids = ids[: result.stop.index - (state.n_response_tokens - len(ids))]
        printer.add(ids)

    eos = generator.generation_config.eos_token_id
    criteria = MonitorStoppingCriteria(monitor, [state], prompt_length=inputs["input_ids"].shape[1],
                                       eos_token_id=eos, on_scored=show)
    output = generator.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                temperature=args.temperature if args.do_sample else None,
                                top_p=args.top_p if args.do_sample else None,
                                stopping_criteria=StoppingCriteriaList([criteria]),
                                pad_token_id=_pad_id(generator, tokenizer))
    printer.add([], final=True)
    generated = output[0, inputs["input_ids"].shape[1]:].tolist()
    stop = criteria.stops[0]
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    ended_by = "monitor" if stop else ("eos" if any(t in eos_ids for t in generated) else "max_new_tokens")
    monitor.close(state)
    return {"prompt": args.prompt, "path": "stopping-criteria", "shown_text": printer.shown,
            "generated_tokens": len(generated), "response_tokens_scored": state.n_response_tokens,
            "stopped": stop is not None, "ended_by": ended_by,
            "stop": _stop_record(stop, tokenizer.decode([stop.token_id])) if stop else None,
            "max_score": _max_score(criteria.results[0]), "count": state.rule_state.count,
            "annotations": _annotations(state)}


class _HaltFlag(StoppingCriteria):
    """Lets the guard (another thread) halt ``generate`` at its next step."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids, scores=None, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def generate_with_guard(monitor, generator, tokenizer, args, out: TextIO) -> dict[str, Any]:
    """Different tokenizers: generate in a thread, re-tokenise its text deltas with the guard, halt on a stop."""
    device = str(generator.device)
    inputs = chat_inputs(tokenizer, args.prompt, device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    halt = _HaltFlag()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["output"] = generator.generate(
                **inputs, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                temperature=args.temperature if args.do_sample else None,
                top_p=args.top_p if args.do_sample else None, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([halt]),
                pad_token_id=_pad_id(generator, tokenizer))
        except BaseException as err:  # re-raised in the main thread
            outcome["error"] = err
            streamer.end()

    guard = _start_prompt(monitor, args.prompt, guard=True, hold_back=args.hold_back)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    shown, scores = [], []
    stop = None
    exhausted = False
    try:
        for delta in streamer:
            update = guard.feed(delta)
            shown.append(update.released)
            scores += update.scores
            if not args.quiet:
                out.write(update.released)
                out.flush()
            if update.stop is not None:
                stop = update.stop
                break
        else:
            exhausted = True
    finally:
        if not exhausted:
            # Stopped (or failed): halt the generator and drain what it produced before it saw the flag, so the
            # thread can finish. An exhausted streamer must not be iterated again: it would block.
            halt.event.set()
            for _ in streamer:
                pass
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if stop is None:
        update = guard.finish()
        shown.append(update.released)
        scores += update.scores
        stop = update.stop
        if not args.quiet:
            out.write(update.released)
    generated = outcome["output"][0, inputs["input_ids"].shape[1]:].tolist()
    eos = generator.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    ended_by = "monitor" if stop else ("eos" if any(t in eos_ids for t in generated) else "max_new_tokens")
    return {"prompt": args.prompt, "path": "text-guard", "shown_text": "".join(shown),
            "generated_tokens": len(generated), "response_tokens_scored": guard.state.n_response_tokens,
            "stopped": stop is not None, "ended_by": ended_by,
            "stop": _stop_record(stop.event, stop.token_text, stop.char_start) if stop else None,
            "max_score": max(scores) if scores else None, "count": guard.state.rule_state.count,
            "annotations": _annotations(guard.state)}


def _start_prompt(monitor: StreamingMonitor, prompt: str, guard: bool = False, hold_back: bool = True):
    """Start the --prompt's stream (or text guard); an over-long prompt is reported as --prompt's fault.

    Raises:
        ValueError: the prompt is longer than the monitor can take.
    """
    try:
        return TextStreamGuard(monitor, prompt, hold_back=hold_back) if guard else monitor.start(prompt)
    except StreamLengthError as err:
        raise ValueError(f"--prompt: {err}") from None


def read_pairs(path: str) -> list[dict[str, str]]:
    """Read ``{"prompt", "response"}`` records.

    Raises:
        DataFormatError: naming the file, the line and the field.
    """
    records = read_jsonl(path)
    if not records:
        raise DataFormatError(f"{path}: no records; write one JSON object per line with 'prompt' and 'response'")
    for line, record in enumerate(records, start=1):
        for name in ("prompt", "response"):
            if not isinstance(record.get(name), str):
                raise DataFormatError(f"{path}, record {line}: field {name!r} is missing or not a string; each line "
                                      f"needs {{\"prompt\": \"...\", \"response\": \"...\"}}")
    return records


def chunk_text(text: str, chunk_chars: int, rng: random.Random) -> list[str]:
    """Cut ``text`` into fixed-size chunks, or random 1-8 character chunks when ``chunk_chars`` is 0."""
    chunks, at = [], 0
    while at < len(text):
        size = chunk_chars or rng.randint(1, 8)
        chunks.append(text[at: at + size])
        at += size
    return chunks


def monitor_pairs(monitor, args, out: TextIO) -> list[dict[str, Any]]:
    """File mode: stream every response through a text guard, chunk by chunk.

    A record the monitor cannot take whole (a prompt or a response beyond the model's maximum length) is reported
    with its record number, what was monitored of it and the error; the other records are still monitored.
    """
    rng = random.Random(args.seed)
    results = []
    for number, record in enumerate(read_pairs(args.input), start=1):
        if not args.quiet:
            out.write(f"\n[record {number}] ")
        try:
            guard = TextStreamGuard(monitor, record["prompt"], hold_back=args.hold_back)
        except StreamLengthError as err:
            results.append(_failed_record(number, record, f"record {number}: {err}", None))
            continue
        scores, stop, error = [], None, None
        try:
            for chunk in chunk_text(record["response"], args.chunk_chars, rng):
                update = guard.feed(chunk)
                scores += update.scores
                if not args.quiet:
                    out.write(update.released)
                if update.stop is not None:
                    stop = update.stop
                    break
            if stop is None:
                update = guard.finish()
                scores += update.scores
                stop = update.stop
                if not args.quiet:
                    out.write(update.released)
        except StreamLengthError as err:
            error = (f"record {number}: the response is longer than the monitor can score (the model's maximum is "
                     f"{monitor.max_length} tokens, prompt included); it was monitored up to response token "
                     f"{guard.state.n_response_tokens} and the rest was not shown ({err})")
        finally:
            guard.close()
        if error is not None:
            results.append(_failed_record(number, record, error, guard))
            continue
        if stop is not None and not args.quiet:
            out.write(f" {stop.notice}")
        results.append({"record": number, "prompt": record["prompt"], "path": "text-guard",
                        "shown_text": guard.released_text, "response_tokens_scored": guard.state.n_response_tokens,
                        "stopped": stop is not None, "ended_by": "monitor" if stop else "end of response",
                        "stop": _stop_record(stop.event, stop.token_text, stop.char_start) if stop else None,
                        "max_score": max(scores) if scores else None, "count": guard.state.rule_state.count,
                        "annotations": _annotations(guard.state)})
    return results


def _failed_record(number: int, record: dict[str, str], error: str, guard: TextStreamGuard | None) -> dict[str, Any]:
    """The result of a record the monitor could not take whole: what was shown and scored, and why it ended."""
    return {"record": number, "prompt": record["prompt"], "path": "text-guard",
            "shown_text": guard.released_text if guard else "",
            "response_tokens_scored": guard.state.n_response_tokens if guard else 0,
            "stopped": False, "ended_by": "error", "error": error, "stop": None, "max_score": None,
            "count": guard.state.rule_state.count if guard else 0, "annotations": _annotations(guard.state) if guard
            else []}


def describe_result(result: dict[str, Any], monitor: StreamingMonitor) -> str:
    """The report of a stream: where and why it stopped (and the category named there, with a category head), or
    why it ended; then one line per category the policy annotated instead of stopping."""
    stop = result["stop"]
    if result.get("error"):
        return f"NOT MONITORED TO THE END: {result['error']}"
    if stop is not None:
        line = (f"STOPPED at response token {stop['index']} ({stop['token_text']!r}, id {stop['token_id']}): "
                f"{stop['scorer']} score {stop['score']:.4f} >= theta {stop['theta']}; {stop['rule']} count "
                f"reached {stop['count']}")
        if stop.get("category") is not None:
            line += f"; category {stop['category']} (category score {stop['category_score']:.4f})"
    else:
        peak = "n/a" if result["max_score"] is None else f"{result['max_score']:.4f}"
        line = (f"not stopped ({result['ended_by']}): {result['response_tokens_scored']} response tokens scored, "
                f"max {monitor.scorer} score {peak}, {monitor.rule.name} count {result['count']} "
                f"(theta {monitor.theta})")
    annotations = result.get("annotations") or []
    if annotations:
        counts: dict[str, int] = {}
        for annotation in annotations:
            counts[annotation["category"]] = counts.get(annotation["category"], 0) + 1
        first = annotations[0]
        line += (f"\n  annotated, not stopped: {', '.join(f'{name} x{n}' for name, n in counts.items())} (first at "
                 f"response token {first['response_token_index']}: {first['category']}, {first['reason']}, category "
                 f"score {first['category_score']:.4f})")
    return line


def main(args: StreamMonitorArguments, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the monitor as the flags say; returns (and optionally writes) the results.

    Raises:
        ValueError: bad flags. FileNotFoundError: a missing checkpoint. DataFormatError: a bad --input file.
    """
    check_args(args)
    config_file = Path(args.model_path) / "config.json"
    if config_file.is_file():  # the category flags against the checkpoint's head, before its weights are loaded
        policy_from_args(args, (read_json(config_file) or {}).get("category_labels"))
    device = _device(args.device)
    # Flags > the checkpoint's operating_point.json > its training default (serve/operating_point.py).
    monitor = StreamingMonitor.from_pretrained(args.model_path, theta=args.theta, k=args.k, rule=args.rule,
                                               scorer=args.scorer, device=device, dtype=args.dtype,
                                               operating_point=args.operating_point,
                                               max_benign_stop_rate=args.max_benign_stop_rate)
    if monitor.tokenizer is None:
        raise ValueError(f"{args.model_path} holds no tokenizer files; save the tokenizer into the checkpoint")
    monitor.category_policy = policy_from_args(args, monitor.category_labels)
    served = monitor.operating_point
    report: dict[str, Any] = {"model_path": args.model_path, "operating_point": monitor.describe(),
                              "operating_point_source": served.public(), "arguments": asdict(args)}
    if served.warning:
        print(f"warning: {served.warning}", file=sys.stderr)
    if not args.quiet:
        out.write(f"[operating point] {served.description}\n")
        if monitor.category_policy is not None:
            policy = monitor.category_policy.public()
            thresholds = ", ".join(f"{name} >= {value:g}" for name, value in policy["thresholds"].items())
            out.write(f"[categories] stop on: {', '.join(policy['block']) or 'none'}; annotate only: "
                      f"{', '.join(policy['annotate']) or 'none'}" + (f"; thresholds: {thresholds}" if thresholds
                                                                       else "") + "\n")
    if args.input is not None:
        results = monitor_pairs(monitor, args, out)
    else:
        from model.assets import smollm2_path

        generator_path = args.generator or str(smollm2_path())
        torch.manual_seed(args.seed)
        tokenizer = AutoTokenizer.from_pretrained(generator_path)
        generator = AutoModelForCausalLM.from_pretrained(generator_path, dtype=resolve_dtype(args.dtype))
        generator.to(device).eval()
        report["generator"] = generator_path
        if not args.quiet:
            out.write(f"[prompt] {args.prompt}\n[response] ")
        if same_tokenizer(tokenizer, monitor.tokenizer):
            results = [generate_with_criteria(monitor, generator, tokenizer, args, out)]
        else:
            results = [generate_with_guard(monitor, generator, tokenizer, args, out)]
        if results[0]["stopped"] and not args.quiet:
            out.write(f" {STOP_NOTICE}")
    out.write("\n\n")
    for result in results:
        prefix = f"[record {result['record']}] " if "record" in result else ""
        out.write(f"{prefix}{describe_result(result, monitor)}\n")
    report["results"] = results
    report["failed_records"] = [result["record"] for result in results if result.get("error")]
    if args.output_file:
        write_json(args.output_file, report)
    return report


if __name__ == "__main__":
    outcome = run_entry_point(main, StreamMonitorArguments, SCRIPT, errors=(ValueError, FileNotFoundError))
    if outcome["failed_records"]:
        print(f"{SCRIPT}: records {outcome['failed_records']} could not be monitored to the end (see above)",
              file=sys.stderr)
        sys.exit(1)
