"""Live check, step 1: answer every prompt of a FineHarm-format split, or of the project's own prompt set, with a
real generator (by default the embedded SmolLM2-135M-Instruct), as a user of the monitor would run it, and keep the
answers as the project's own data.

With ``--input-dir`` the prompts are the split's own (realmix test for the live check); what is written is the
*generated* answers, keyed by the split's record index (``test-00012``, the ids ``utils/data_process.py`` gives), with
a SHA-256 of the prompt so the key can be checked against the data, and the record's source metadata. The prompts and
the data's responses themselves are never written, so the output can be committed where the data may not be.

With ``--prompts`` the prompts are a prompt-set JSONL in the format of ``test/live_prompts.jsonl`` (the project's own
requests, ``test/live_prompts.py``): answers are keyed by the prompt's ``id`` and carry the prompt text itself (the
project wrote it), its SHA-256, ``intent``, ``category``, ``sounds_dangerous`` and ``requests_harm`` (intent harmful).

Decoding is deterministic: greedy by default (``--do-sample`` samples with ``--seed``), through the generator's chat
template (SmolLM2's adds its default system prompt), at most ``--max-new-tokens`` new tokens. Identical prompts are
answered once (the record lists every index that shares it). Batches are left-padded and sorted by prompt length;
greedy answers are reproducible for the same ``--batch-size`` (padding can change the last bits of fp32 logits).
Finished batches are appended to ``<output>.partial.jsonl`` so an interrupted run resumes where it stopped; the
final file is written atomically and the partial file removed.

Commands (``bash scripts/run-live-check.sh generate`` runs the first)::

    python -m test.live_generate --input-dir ../shared/data/realmix --split test \
        --output-file results/live-check/answers.jsonl
    python -m test.live_generate --input-dir .cache/fineharm-sample --split test --limit 8 --max-new-tokens 32 \
        --output-file runs/live/answers.jsonl
    python -m test.live_generate --prompts test/live_prompts.jsonl \
        --output-file results/live-check-own/answers.jsonl --num-threads 1
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from utils.cli import parse_dataclasses, require_at_least
from utils.data.fineharm import SPLIT_FILES, load_split
from utils.io_utils import DataFormatError, read_jsonl, write_json, write_jsonl

logger = logging.getLogger("live_generate")
SCRIPT = "python -m test.live_generate"
# Which prompts ask for harmful content, from the sources' own metadata (results/live-check/LABELLING.md):
# every JailbreakBench artifact prompt targets one of its harmful behaviours; XSTest's unsafe prompts are the
# contrast_* types (its safe prompts only look unsafe).
HARMFUL_REQUEST_SOURCES = ("jbb",)
XSTEST_UNSAFE_PREFIX = "contrast_"


@dataclass
class LiveGenerateArguments:
    """Flags of ``python -m test.live_generate``."""

    output_file: str = field(metadata={"help": "JSONL of generated answers (a .meta.json sidecar goes beside it)."})
    input_dir: str | None = field(default=None, metadata={
        "help": "FineHarm-format folder whose prompts are answered (e.g. ../shared/data/realmix); or use --prompts."})
    prompts: str | None = field(default=None, metadata={
        "help": "Prompt-set JSONL to answer instead of --input-dir (e.g. test/live_prompts.jsonl, the project's own "
                "requests; its prompt text is stored with each answer)."})
    split: str = field(default="test", metadata={"help": "Split whose prompts are answered.",
                                                 "choices": list(SPLIT_FILES)})
    generator: str | None = field(default=None, metadata={
        "help": "HF causal LM folder (default: the embedded SmolLM2-135M-Instruct)."})
    max_new_tokens: int = field(default=160, metadata={"help": "Most new tokens per answer."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call (left-padded)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (with --seed) instead of greedy decoding."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (only with --do-sample)."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N distinct prompts."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu or cuda."})
    num_threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads (default: torch's). On a busy shared CPU, 1 avoids threads waiting on each "
                "other (measured here, batch 8: 17 new tokens took 2.4 s of CPU with 1 thread, 1 token 5.7 s with 2)."})


def prompt_sha256(prompt: str) -> str:
    """Hex SHA-256 of the UTF-8 prompt: identifies it without storing it."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def requests_harm(meta: dict[str, Any]) -> bool:
    """Whether a record's prompt asks for harmful content, from its source metadata (see module constants)."""
    if meta.get("source") in HARMFUL_REQUEST_SOURCES:
        return True
    return str(meta.get("type", "")).startswith(XSTEST_UNSAFE_PREFIX)


def distinct_prompts(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """One entry per distinct prompt, in order of first appearance.

    Returns:
        Dicts with ``key`` (the first record's processed id), ``indices`` (every record with this prompt),
        ``prompt`` (kept in memory only), ``prompt_sha256`` and the first record's source metadata.
    """
    by_hash: dict[str, dict[str, Any]] = {}
    for index, record in enumerate(records):
        digest = prompt_sha256(record["prompt"])
        if digest in by_hash:
            by_hash[digest]["indices"].append(index)
            continue
        meta = record.get("meta") or {}
        by_hash[digest] = {
            "key": f"{split}-{index:05d}", "indices": [index], "prompt": record["prompt"], "prompt_sha256": digest,
            "source": meta.get("source"), "attack": meta.get("attack"), "model": meta.get("model"),
            "type": meta.get("type"), "requests_harm": requests_harm(meta),
        }
    return list(by_hash.values())


def own_prompts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries like :func:`distinct_prompts`' for a prompt set (:func:`test.live_prompts.read_prompts` records).

    Returns:
        Dicts with ``key`` (the record's ``id``), ``prompt`` (stored with the answer: the project wrote it),
        ``prompt_sha256``, ``source`` ("project"), ``intent``, ``category``, ``sounds_dangerous`` and
        ``requests_harm`` (intent harmful).
    """
    return [{"key": r["id"], "prompt": r["prompt"], "prompt_sha256": prompt_sha256(r["prompt"]), "source": "project",
             "intent": r["intent"], "category": r["category"], "sounds_dangerous": r["sounds_dangerous"],
             "requests_harm": r["intent"] == "harmful"} for r in records]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu (or auto)")
    return torch.device(name)


def _chat_text(tokenizer: Any, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
    return prompt


def generate_answers(
    model: Any, tokenizer: Any, prompts: list[dict[str, Any]], args: LiveGenerateArguments, done: set[str],
    on_batch: Any, keep_prompt: bool = False,
) -> None:
    """Answer ``prompts`` (skipping keys in ``done``) in length-sorted, left-padded batches.

    Args:
        model, tokenizer: the generator (``tokenizer.padding_side`` is set to left here).
        prompts: :func:`distinct_prompts` or :func:`own_prompts` output; every field but ``prompt`` goes into the
            answer record.
        args: generation settings.
        done: keys already answered (resumed run).
        on_batch: called with the list of answer records of each finished batch.
        keep_prompt: also store the prompt text (the project's own prompts only).
    """
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    todo = [p for p in prompts if p["key"] not in done]
    texts = {p["key"]: _chat_text(tokenizer, p["prompt"]) for p in todo}
    lengths = {key: len(tokenizer(text, add_special_tokens=False)["input_ids"]) for key, text in texts.items()}
    todo.sort(key=lambda p: (lengths[p["key"]], p["key"]))
    with tqdm(total=len(todo), desc="generating", unit="prompt", file=sys.stderr) as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            encoded = tokenizer([texts[p["key"]] for p in batch], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            if args.do_sample:
                torch.manual_seed(args.seed + start)
            with torch.inference_mode():
                output = model.generate(
                    **encoded, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, pad_token_id=pad_id,
                    **({"temperature": args.temperature} if args.do_sample else {"temperature": None, "top_p": None,
                                                                                  "top_k": None}))
            new = output[:, encoded["input_ids"].shape[1]:].tolist()
            records = []
            for prompt, ids in zip(batch, new):
                finished = tokenizer.eos_token_id in ids
                if finished:
                    ids = ids[:ids.index(tokenizer.eos_token_id)]
                records.append({
                    **{k: v for k, v in prompt.items() if keep_prompt or k != "prompt"},
                    "prompt_tokens": lengths[prompt["key"]],
                    "answer": tokenizer.decode(ids, skip_special_tokens=True),
                    "answer_tokens": len(ids),
                    "finished": finished,
                })
            on_batch(records)
            bar.update(len(batch))


def _partial_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".partial.jsonl")


def main(args: LiveGenerateArguments) -> Path:
    """Generate, resume-safely, and write ``--output-file`` (+ ``.meta.json``); returns the output path.

    Raises:
        ValueError: bad flags. FileNotFoundError / DataFormatError: missing or malformed input.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    require_at_least(args, 1, "max_new_tokens", "batch_size", "num_threads")
    require_at_least(args, 1, "limit", hint="or left out")
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    output = Path(args.output_file)
    if output.suffix != ".jsonl":
        raise ValueError(f"--output-file {output} must end in .jsonl")
    if (args.input_dir is None) == (args.prompts is None):
        raise ValueError("pass exactly one of --input-dir (a FineHarm-format folder, e.g. ../shared/data/realmix) and "
                         "--prompts (a prompt set, e.g. test/live_prompts.jsonl)")
    if args.prompts is not None:
        from test.live_prompts import read_prompts

        records = read_prompts(args.prompts)
        prompts = own_prompts(records)[:args.limit]
        source = {"prompts": args.prompts, "records": len(records), "distinct_prompts": len(prompts)}
    else:
        records = load_split(Path(args.input_dir) / SPLIT_FILES[args.split])
        prompts = distinct_prompts(records, args.split)[:args.limit]
        source = {"dir": args.input_dir, "split": args.split, "records": len(records),
                  "distinct_prompts": len(prompts)}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model.assets import smollm2_path

    generator = args.generator or str(smollm2_path())
    device = _device(args.device)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(generator, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(generator)
    partial = _partial_path(output)
    answers = read_jsonl(partial) if partial.is_file() else []
    keys = {p["key"]: p for p in prompts}
    for answer in answers:
        if answer.get("key") not in keys or answer.get("prompt_sha256") != keys[answer["key"]]["prompt_sha256"]:
            raise DataFormatError(f"{partial}: holds answers to other prompts (key {answer.get('key')!r}); delete it "
                                  f"or use the --input-dir/--split or --prompts it was made with")
    if answers:
        logger.info("resuming: %d of %d prompts already answered in %s", len(answers), len(prompts), partial)
    output.parent.mkdir(parents=True, exist_ok=True)

    def append(batch: list[dict[str, Any]]) -> None:
        answers.extend(batch)
        with open(partial, "a", encoding="utf-8") as handle:
            for record in batch:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    generate_answers(model, tokenizer, prompts, args, {a["key"] for a in answers}, append,
                     keep_prompt=args.prompts is not None)
    order = {p["key"]: i for i, p in enumerate(prompts)}
    answers.sort(key=lambda a: order[a["key"]])
    write_jsonl(output, answers)
    import transformers

    write_json(output.with_name(output.name.removesuffix(".jsonl") + ".meta.json"), {
        "format_version": 1, "script": SCRIPT, "arguments": asdict(args), "command": " ".join([SCRIPT, *sys.argv[1:]]),
        "generator": args.generator or "embedded SmolLM2-135M-Instruct (model.assets.smollm2_path())",
        "input": source,
        "answers": len(answers), "finished": sum(a["finished"] for a in answers),
        "requests_harm": sum(a["requests_harm"] for a in answers),
        "decoding": "sampled" if args.do_sample else "greedy", "chat_template": bool(tokenizer.chat_template),
        "device": str(device), "dtype": "float32", "seconds_this_run": round(time.perf_counter() - started, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    partial.unlink(missing_ok=True)
    logger.info("wrote %d answers to %s", len(answers), output)
    return output


def parse_args(argv: list[str] | None = None) -> LiveGenerateArguments:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one."""
    (args,) = parse_dataclasses((LiveGenerateArguments,), argv, prog=SCRIPT)
    return args


if __name__ == "__main__":
    main(parse_args())
