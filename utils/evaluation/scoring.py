"""Shared machinery of the evaluation entry points (``test/test_*.py``): arguments, checkpoint loading, batched
inference, and the flow "predictions file -> metrics -> plots -> summary -> report".

Inference is built for throughput and bounded memory: batches are length-sorted with dynamic padding (never padded
to a fixed 4096, the paper code's main cost: 8.6 against 283 examples/s measured on one H200), right-padded, run under
``torch.inference_mode``, and the results are put back in data order. The encoder's partial mode re-classifies
every response prefix; prefixes are produced lazily and sorted within a bounded buffer, so a split's prefixes are
never all in memory at once.

What follows the predictions files (metrics JSONs, plots, ``summary.json``, ``report.md``) is
``utils/evaluation/outputs.py``, shared with re-scoring (``python -m utils.evaluation.rescore``). Every output is written atomically
(``utils.io_utils``): an interrupted run leaves complete files or none.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from tqdm import tqdm

from utils.evaluation.operating_point import record_operating_point
from utils.evaluation.outputs import portable_command, portable_path, write_evaluation_outputs
from utils.io_utils import DataFormatError, read_json
from utils.metrics import MAX_BENIGN_STOP_RATE, MAX_K, SELECTION_TOLERANCE, THRESHOLDS
from utils.evaluation.predictions import make_record, predictions_path, read_predictions, write_predictions
from utils.data.processed_data import check_vocabulary, load_meta, load_split

logger = logging.getLogger("evaluation")

SPLITS = ("train", "val", "test")
DEFAULT_OPERATING_POINTS = ("leak_free", "leak_free_early", "budget")
CAUSAL_TASKS = ("scm", "qwen-full")
ENCODER_TASKS = ("encoder-full",)
LEXICAL_TASKS = ("lexical",)
MONITOR_MODEL_TYPES = ("scm", "scm-encoder-classifier", "scm-lexical")
# Which entry point evaluates which kind of checkpoint (quoted in "wrong checkpoint" errors).
SCRIPTS_FOR_TASK = {
    "scm": "python -m test.test_qwen_partial (bash scripts/run-scm.sh test ...) or python -m test.test_qwen_full",
    "qwen-full": "python -m test.test_qwen_full (bash scripts/run-qwen-full.sh test ...) or python -m "
                 "test.test_qwen_partial (bash scripts/run-qwen-partial.sh test ...)",
    "encoder-full": "python -m test.test_modernbert_full (bash scripts/run-modernbert-full.sh test ...) or python -m "
                    "test.test_modernbert_partial (bash scripts/run-modernbert-partial.sh test ...)",
    "lexical": "python -m test.test_lexical --mode full|partial (bash scripts/run-lexical.sh test ...)",
}


@dataclass
class EvalArguments:
    """Flags shared by every evaluation entry point (each script may change defaults or add flags)."""

    model_path: str = field(metadata={"help": "Checkpoint folder (config.json + safetensors + tokenizer files)."})
    data_dir: str = field(metadata={"help": "Processed data folder (val.jsonl, test.jsonl) from scripts/run-data.sh."})
    output_dir: str = field(metadata={"help": "Where predictions, metrics, summary.json, report.md and plots go."})
    splits: str = field(default="val,test", metadata={"help": "Comma-separated splits to score. Leak-free "
                                                              "selection needs val; the table reports test."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass (length-sorted batches)."})
    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples from the right (counted); "
                                                            "also capped by the model's position limit."})
    thresholds: str = field(default=",".join(f"{t:g}" for t in THRESHOLDS),
                            metadata={"help": "Comma-separated thresholds theta in [0, 1]."})
    max_k: int = field(default=MAX_K, metadata={"help": "Delay-k sweep upper bound (k = 1..max_k)."})
    selection_tolerance: float = field(default=100 * SELECTION_TOLERANCE, metadata={
        "help": "Macro-F1 points the early leak-free rule may give up on validation for an earlier stop: it picks "
                "the smallest k, then theta, within this many points of the best (0 = the max-F1 rule)."})
    max_benign_stop_rate: float = field(default=MAX_BENIGN_STOP_RATE, metadata={
        "help": "False-stop budget of the leak_free_budget rule: the share of benign validation responses the "
                "monitor may stop (0.02 = 2%%); among the (theta, k) within it, the best validation macro-F1."})
    default_operating_point: str = field(default="leak_free", metadata={
        "help": "Partial runs: which chosen point operating_point.json (written into --model-path) marks as the "
                "one to serve when run-serve.sh / run-stream.sh get no --operating-point.",
        "choices": ["leak_free", "leak_free_early", "budget"]})
    limit: int | None = field(default=None, metadata={"help": "Score only the first N examples of each split."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:1."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, flash_attention_2 "
                                                                            "(default: the model's)."})


def parse_splits(text: str) -> list[str]:
    """``"val,test"`` -> ``["val", "test"]``.

    Raises:
        ValueError: an unknown or repeated split, or none.
    """
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits:
        raise ValueError("--splits is empty; use e.g. --splits val,test")
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"--splits: unknown split {split!r}; choose from {', '.join(SPLITS)} (e.g. val,test)")
    if len(set(splits)) != len(splits):
        raise ValueError(f"--splits repeats a split: {text!r}")
    return splits


def parse_thresholds(text: str) -> list[float]:
    """``"0.5,0.9"`` -> ``[0.5, 0.9]`` (sorted, unique).

    Raises:
        ValueError: a value that is not a number in [0, 1], or none.
    """
    values = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--thresholds: {item!r} is not a number; use e.g. --thresholds 0.5,0.7,0.9") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"--thresholds: {value} is outside [0, 1]")
        values.append(value)
    if not values:
        raise ValueError("--thresholds is empty; use e.g. --thresholds 0.5,0.6,0.7,0.8,0.9")
    return sorted(set(values))


def check_common_args(args: EvalArguments) -> tuple[list[str], list[float]]:
    """Validate the shared flags; returns the parsed splits and thresholds.

    Raises:
        ValueError: naming the flag and an accepted value.
    """
    for name in ("batch_size", "max_k"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_length < 2:
        raise ValueError(f"--max-length must be >= 2, got {args.max_length}")
    if not (math.isfinite(args.selection_tolerance) and 0.0 <= args.selection_tolerance <= 100.0):
        raise ValueError(f"--selection-tolerance is in macro-F1 points, from 0 to 100 (e.g. 1.0), got "
                         f"{args.selection_tolerance}")
    if not (math.isfinite(args.max_benign_stop_rate) and 0.0 <= args.max_benign_stop_rate <= 1.0):
        raise ValueError(f"--max-benign-stop-rate is a share of the benign validation responses, from 0 to 1 (e.g. "
                         f"0.02 for 2%), got {args.max_benign_stop_rate}")
    if args.default_operating_point not in DEFAULT_OPERATING_POINTS:
        raise ValueError(f"--default-operating-point must be one of {', '.join(DEFAULT_OPERATING_POINTS)}, got "
                         f"{args.default_operating_point!r}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1 (or left out for the whole split), got {args.limit}")
    return parse_splits(args.splits), parse_thresholds(args.thresholds)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu.

    Raises:
        ValueError: an unknown device, or cuda requested on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere.

    Raises:
        ValueError: an unknown name, or fp16 on a CPU (slow and unsupported by several kernels).
    """
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in names:
        raise ValueError(f"--dtype {name!r} is unknown; use auto, bf16, fp16 or fp32")
    if names[name] is torch.float16 and device.type == "cpu":
        raise ValueError("--dtype fp16 is not supported on a CPU; use --dtype fp32 (or bf16)")
    return names[name]


def checkpoint_task(model_path: str | Path) -> str:
    """The ``task`` of a monitor checkpoint, read from its ``config.json`` without loading weights.

    Raises:
        FileNotFoundError: the folder or its config.json is missing.
        ValueError: the folder holds a model that is not a monitor checkpoint.
    """
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"--model-path {path} does not exist; train a model first (bash scripts/run-scm.sh, "
                                f"run-qwen-full.sh or run-modernbert-full.sh) and pass its --output-dir")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} holds no config.json, so it is not a checkpoint folder; pass the training "
                                f"--output-dir (or one of its checkpoint-* folders)")
    config = read_json(config_file)
    model_type = config.get("model_type")
    if model_type not in MONITOR_MODEL_TYPES:
        raise ValueError(f"{path} is a {model_type!r} model, not a trained monitor (model_type scm, "
                         f"scm-encoder-classifier or scm-lexical); train one with bash scripts/run-scm.sh / "
                         f"run-qwen-full.sh / run-modernbert-full.sh / run-lexical.sh")
    return config.get("task") or ("encoder-full" if model_type == "scm-encoder-classifier" else "scm")


def check_task(model_path: str | Path, allowed: Sequence[str], script: str) -> str:
    """Fail unless the checkpoint's task is one this script evaluates; returns the task.

    Raises:
        ValueError: naming the checkpoint's task and the script that evaluates it.
    """
    task = checkpoint_task(model_path)
    if task not in allowed:
        raise ValueError(
            f"{model_path} is a {task!r} checkpoint, which {script} does not evaluate (it takes "
            f"{' / '.join(allowed)}); use {SCRIPTS_FOR_TASK.get(task, 'the matching test/test_*.py script')}"
        )
    return task


@dataclass
class Checkpoint:
    """A loaded monitor: the model (eval mode, on its device), its tokenizer and facts the flow needs."""

    model: Any
    tokenizer: Any
    task: str
    path: Path
    max_positions: int | None
    pad_id: int
    backbone_type: str | None
    vocab_size: int | None = None  # ids the model accepts; None: the input embedding table's size


def load_checkpoint(
    model_path: str | Path,
    allowed_tasks: Sequence[str],
    script: str,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str | None = None,
) -> Checkpoint:
    """Rebuild a monitor and its tokenizer from the checkpoint folder alone.

    Args:
        model_path: checkpoint folder.
        allowed_tasks: tasks this script evaluates.
        script: the script's module name (for messages).
        device, dtype: where and in which precision to run.
        attn_implementation: optional attention backend.

    Raises:
        FileNotFoundError / ValueError: as :func:`check_task`. OSError: weights or tokenizer that do not load.
    """
    from transformers import AutoTokenizer

    from model import EncoderForSequenceClassification, SCMModel

    task = check_task(model_path, allowed_tasks, script)
    model_class = EncoderForSequenceClassification if task in ENCODER_TASKS else SCMModel
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = model_class.from_pretrained(str(model_path), **kwargs).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    except Exception as err:  # tokenizers raise many types; the folder is what the user must fix
        raise OSError(f"{model_path}: no loadable tokenizer files ({err}); training saves them beside the model") \
            from err
    inner = model.config.backbone_config if task in CAUSAL_TASKS else model.config.encoder_config
    vocab = model.get_input_embeddings().num_embeddings
    # Padded positions are masked out, so any in-vocabulary id works; prefer the tokenizer's own pad/eos.
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None and t < vocab), 0)
    return Checkpoint(model=model, tokenizer=tokenizer, task=task, path=Path(model_path),
                      max_positions=getattr(inner, "max_position_embeddings", None), pad_id=pad_id,
                      backbone_type=getattr(inner, "model_type", None))


@dataclass
class EvalExample:
    """One processed example prepared for scoring.

    Attributes:
        id, label: from the processed record.
        input_ids, token_labels: possibly truncated.
        response_start, response_end: response tokens are ``input_ids[response_start:response_end]``.
        suffix_ids: ids appended after the response in the data (the EOS/SEP), re-appended to encoder prefixes.
        truncated: whether ``--max-length`` cut the example.
    """

    id: str
    label: int
    input_ids: list[int]
    token_labels: list[int]
    response_start: int
    response_end: int
    suffix_ids: list[int]
    truncated: bool = False
    category: str | None | object = ...  # the data's harm category; ``...``: data without categories

    @property
    def n_response_tokens(self) -> int:
        return self.response_end - self.response_start

    def response_token_labels(self) -> list[int]:
        return self.token_labels[self.response_start:self.response_end]


def _eos_appended(meta: dict[str, Any], record: dict[str, Any], tokenizer: Any) -> bool:
    if "eos_appended" in meta:
        return bool(meta["eos_appended"])
    # Hand-made folders without meta.json: an unlabelled trailing EOS/SEP of the tokenizer was appended.
    closers = {tokenizer.eos_token_id, tokenizer.sep_token_id} - {None}
    return record["input_ids"][-1] in closers and record["token_labels"][-1] == -100


def prepare_example(
    record: dict[str, Any], where: str, max_length: int, eos_appended: bool, keep_suffix_on_truncation: bool
) -> EvalExample:
    """Turn a processed record into an :class:`EvalExample`, truncating from the right.

    Args:
        record: a validated processed record (``load_split``).
        where: ``"<file>, line N"`` for messages.
        max_length: maximum number of tokens.
        eos_appended: whether the record ends with an appended EOS/SEP (not a response token).
        keep_suffix_on_truncation: keep the EOS/SEP as the last token of a truncated example (the encoder was
            trained so); the causal models are truncated plainly, as in training.

    Raises:
        DataFormatError: a missing or out-of-range ``response_start``.
    """
    ids, labels = list(record["input_ids"]), list(record["token_labels"])
    response_end = len(ids) - 1 if eos_appended else len(ids)
    start = record.get("response_start")
    if not isinstance(start, int) or isinstance(start, bool):
        raise DataFormatError(f"{where}: field 'response_start' is missing or not an integer; re-run "
                              f"scripts/run-data.sh to regenerate the data")
    if not 0 <= start <= response_end:
        raise DataFormatError(f"{where}: field 'response_start' = {start} is outside the sequence (response ends at "
                              f"{response_end}); re-run scripts/run-data.sh")
    suffix = ids[response_end:]
    truncated = len(ids) > max_length
    if truncated:
        if keep_suffix_on_truncation and suffix:
            cut = max_length - len(suffix)
            ids, labels = ids[:cut] + suffix, labels[:cut] + [-100] * len(suffix)
        else:
            cut = max_length
            ids, labels, suffix = ids[:cut], labels[:cut], []
        response_end = min(response_end, cut)
    # A prompt longer than max_length leaves no response token: an empty (never stopped) response.
    response_end = max(response_end, start)
    start = min(start, response_end)
    return EvalExample(id=str(record["id"]), label=int(record["sequence_labels"]), input_ids=ids,
                       token_labels=labels, response_start=start, response_end=response_end, suffix_ids=suffix,
                       truncated=truncated, category=record["category"] if "category" in record else ...)


def load_split_records(data_dir: str | Path, split: str, limit: int | None) -> list[dict[str, Any]]:
    """Load and validate one processed split before any model is loaded, so bad data fails fast.

    Raises:
        FileNotFoundError: the split file is missing (the message says to run scripts/run-data.sh).
        DataFormatError: an empty split, or a record missing a field (file, line and field named).
    """
    try:
        records = load_split(data_dir, split, limit)
    except FileNotFoundError as err:
        if split != "test":
            raise FileNotFoundError(f"{err}; or leave the split out with --splits test") from None
        raise
    path = Path(data_dir) / f"{split}.jsonl"
    for line, record in enumerate(records, start=1):
        start = record.get("response_start")
        if not isinstance(start, int) or isinstance(start, bool):
            raise DataFormatError(f"{path}, line {line}: field 'response_start' is missing or not an integer; "
                                  f"re-run scripts/run-data.sh to regenerate the data")
    return records


def prepare_examples(
    records: list[dict[str, Any]],
    data_dir: str | Path,
    split: str,
    checkpoint: Checkpoint,
    max_length: int,
    keep_suffix_on_truncation: bool,
) -> list[EvalExample]:
    """Check a split's ids against the model's vocabulary and prepare its examples for scoring.

    Raises:
        DataFormatError: ids outside the model's vocabulary (data processed with another tokenizer), or a
            ``response_start`` outside its sequence.
    """
    vocab = checkpoint.vocab_size or checkpoint.model.get_input_embeddings().num_embeddings
    check_vocabulary(records, vocab, data_dir, str(checkpoint.path))
    return prepare_split(records, data_dir, split, checkpoint.tokenizer, max_length, keep_suffix_on_truncation)


def prepare_split(
    records: list[dict[str, Any]],
    data_dir: str | Path,
    split: str,
    tokenizer: Any,
    max_length: int,
    keep_suffix_on_truncation: bool,
) -> list[EvalExample]:
    """Prepare a split's validated records (:func:`prepare_example`), without a model (the lexical floor's training
    uses it too). ``tokenizer`` only matters for hand-made folders without ``meta.json``.

    Raises:
        DataFormatError: a ``response_start`` outside its sequence.
    """
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.jsonl"
    return [
        prepare_example(record, f"{path}, line {line}", max_length, _eos_appended(meta, record, tokenizer),
                        keep_suffix_on_truncation)
        for line, record in enumerate(records, start=1)
    ]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (a memory error shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence of the batch; returns ``(input_ids, attention_mask)`` on ``device``."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


def _harmful_probability(logits: torch.Tensor) -> torch.Tensor:
    # Softmax in fp32: bf16 probabilities near a threshold would be too coarse (8 bits of mantissa).
    return torch.softmax(logits.float(), dim=-1)[..., 1]


@dataclass
class ScoredExample:
    """Model outputs for one example: per-prefix scores per scorer (may be empty) and the full-response score."""

    scores: dict[str, list[float]]
    full_score: float | None
    category_ids: list[int] | None = None  # a category head's most likely category per response token


def score_causal(
    checkpoint: Checkpoint,
    examples: Sequence[EvalExample],
    batch_size: int,
    scorers: Sequence[str],
    desc: str = "scoring",
) -> list[ScoredExample]:
    """One causal forward per example: every response prefix's scores and the full-response holistic score.

    ``token``: the token scorer (softmax class 1) at each response position. ``holistic``: the holistic head
    applied at each response position (the public evaluation's way). Both depend only on the prefix ending at
    that position because the backbone is causal. ``full_score``: the holistic head where the checkpoint's
    ``holistic_pooling`` rule reads the whole sequence (the paper's ``last-non-pad``: the last token that is not the
    pad id, so with Qwen2.5/SmolLM2 the last response token before the appended EOS; see ``holistic_index``).

    Returns:
        One :class:`ScoredExample` per example, in data order.
    """
    model = checkpoint.model
    device = next(model.parameters()).device
    results: list[ScoredExample | None] = [None] * len(examples)
    batches = length_sorted_batches([len(e.input_ids) for e in examples], batch_size)
    with torch.inference_mode(), tqdm(total=len(examples), desc=desc, unit="ex", file=sys.stderr) as bar:
        for batch in batches:
            ids, mask = pad_batch([examples[i].input_ids for i in batch], checkpoint.pad_id, device)
            out = model(input_ids=ids, attention_mask=mask, use_cache=False)
            per_position = {}
            if "token" in scorers:
                per_position["token"] = _harmful_probability(out.token_logits).cpu()
            if "holistic" in scorers:
                per_position["holistic"] = _harmful_probability(model.holistic_scorer(out.last_hidden_state)).cpu()
            full = _harmful_probability(out.sequence_logits).cpu().tolist()
            named = out.category_logits.argmax(-1).cpu() if getattr(out, "category_logits", None) is not None else None
            for row, index in enumerate(batch):
                example = examples[index]
                span = slice(example.response_start, example.response_end)
                results[index] = ScoredExample(
                    scores={name: probs[row, span].tolist() for name, probs in per_position.items()},
                    full_score=full[row],
                    category_ids=named[row, span].tolist() if named is not None else None,
                )
            bar.update(len(batch))
    return results  # type: ignore[return-value]


def _classify(checkpoint: Checkpoint, sequences: Sequence[Sequence[int]], device: torch.device) -> list[float]:
    ids, mask = pad_batch(sequences, checkpoint.pad_id, device)
    return _harmful_probability(checkpoint.model(input_ids=ids, attention_mask=mask).logits).cpu().tolist()


def score_encoder_full(
    checkpoint: Checkpoint, examples: Sequence[EvalExample], batch_size: int, desc: str = "scoring"
) -> list[ScoredExample]:
    """The encoder classifier on each whole input (full detection), in data order."""
    device = next(checkpoint.model.parameters()).device
    results: list[ScoredExample | None] = [None] * len(examples)
    with torch.inference_mode(), tqdm(total=len(examples), desc=desc, unit="ex", file=sys.stderr) as bar:
        for batch in length_sorted_batches([len(e.input_ids) for e in examples], batch_size):
            for index, prob in zip(batch, _classify(checkpoint, [examples[i].input_ids for i in batch], device)):
                results[index] = ScoredExample(scores={}, full_score=prob)
            bar.update(len(batch))
    return results  # type: ignore[return-value]


def prefix_ids(example: EvalExample, position: int) -> list[int]:
    """Encoder input for the prefix ending at response token ``position``: the ids up to it, then the suffix
    (SEP/EOS) the data appended, so every prefix looks like a complete input to the classifier."""
    return example.input_ids[:example.response_start + position + 1] + example.suffix_ids


def iter_prefix_jobs(examples: Sequence[EvalExample]) -> Iterator[tuple[int, int, int]]:
    """Lazily yield ``(example_index, position, length)`` for every response prefix of every example."""
    for index, example in enumerate(examples):
        for position in range(example.n_response_tokens):
            yield index, position, example.response_start + position + 1 + len(example.suffix_ids)


def bucketed_batches(
    jobs: Iterable[tuple[int, int, int]], batch_size: int, buffer_size: int
) -> Iterator[list[tuple[int, int, int]]]:
    """Batches of similar length from a stream of jobs, holding at most ``buffer_size`` jobs at a time.

    Sorting inside a bounded buffer gives most of the padding saving of a global sort without materialising every
    prefix of the split.
    """
    buffer: list[tuple[int, int, int]] = []

    def drain() -> Iterator[list[tuple[int, int, int]]]:
        buffer.sort(key=lambda job: -job[2])
        for i in range(0, len(buffer), batch_size):
            yield buffer[i:i + batch_size]
        buffer.clear()

    for job in jobs:
        buffer.append(job)
        if len(buffer) >= buffer_size:
            yield from drain()
    yield from drain()


def score_encoder_prefixes(
    checkpoint: Checkpoint,
    examples: Sequence[EvalExample],
    batch_size: int,
    buffer_batches: int = 32,
    desc: str = "prefixes",
) -> list[ScoredExample]:
    """Classify every response prefix separately (an encoder sees the whole input, so no one-pass shortcut),
    plus the whole input for ``full_score``.

    Args:
        checkpoint: an encoder-full checkpoint.
        examples: prepared examples.
        batch_size: prefixes per forward pass.
        buffer_batches: prefixes sorted together = ``batch_size * buffer_batches`` (bounds memory).

    Returns:
        One :class:`ScoredExample` per example with ``scores["holistic"]``, in data order.
    """
    device = next(checkpoint.model.parameters()).device
    full = score_encoder_full(checkpoint, examples, batch_size, desc=f"{desc} (full)")
    scores = [[0.0] * e.n_response_tokens for e in examples]
    total = sum(e.n_response_tokens for e in examples)
    jobs = iter_prefix_jobs(examples)
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="prefix", file=sys.stderr) as bar:
        for batch in bucketed_batches(jobs, batch_size, batch_size * buffer_batches):
            probs = _classify(checkpoint, [prefix_ids(examples[i], pos) for i, pos, _ in batch], device)
            for (index, position, _), prob in zip(batch, probs):
                scores[index][position] = prob
            bar.update(len(batch))
    return [ScoredExample(scores={"holistic": s}, full_score=f.full_score) for s, f in zip(scores, full)]


def prediction_records(examples: Sequence[EvalExample], scored: Sequence[ScoredExample]) -> list[dict[str, Any]]:
    """Prediction records (``utils/evaluation/predictions.py`` format) from prepared examples and their scores."""
    return [
        make_record(e.id, e.label, e.response_start, e.response_token_labels(), s.scores or None, s.full_score,
                    e.category, s.category_ids)
        for e, s in zip(examples, scored)
    ]


InferenceFn = Callable[[Checkpoint, list[EvalExample], str], list[ScoredExample]]
LoadFn = Callable[[torch.device, torch.dtype], Checkpoint]


def run_evaluation(
    args: EvalArguments,
    *,
    script: str,
    allowed_tasks: Sequence[str],
    infer: InferenceFn,
    scorers: Sequence[str],
    keep_suffix_on_truncation: bool,
    load_model: LoadFn | None = None,
) -> dict[str, Any]:
    """The flow every entry point shares: load, score each split, write predictions, then metrics from the files,
    plots, ``summary.json`` and ``report.md``; a partial run then records its chosen operating points in the
    checkpoint folder (``operating_point.json``, :mod:`utils.evaluation.operating_point`).

    Args:
        args: parsed flags.
        script: the entry point's module name (for messages and the summary).
        allowed_tasks: checkpoint tasks the script evaluates.
        infer: ``f(checkpoint, examples, split) -> scores`` (the script's way of scoring).
        scorers: per-prefix score names the inference writes (empty for full detection).
        keep_suffix_on_truncation: see :func:`prepare_example`.
        load_model: ``f(device, dtype) -> Checkpoint`` for models that are not torch checkpoints (the lexical
            floor); default :func:`load_checkpoint`.

    Returns:
        The summary (also written to ``<output_dir>/summary.json``).

    Raises:
        ValueError / FileNotFoundError / DataFormatError / OSError: bad flags, checkpoint or data, with the fix.
    """
    splits, thresholds = check_common_args(args)
    task = check_task(args.model_path, allowed_tasks, script)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    output_dir = Path(args.output_dir)
    # Data first: a bad data folder fails before minutes of model loading.
    data_by_split = {split: load_split_records(args.data_dir, split, args.limit) for split in splits}
    if load_model is None:
        checkpoint = load_checkpoint(args.model_path, allowed_tasks, script, device, dtype, args.attn_implementation)
    else:
        checkpoint = load_model(device, dtype)
    max_length = args.max_length
    if checkpoint.max_positions and checkpoint.max_positions < max_length:
        logger.warning("--max-length %d exceeds the model's %d positions; using %d", max_length,
                       checkpoint.max_positions, checkpoint.max_positions)
        max_length = checkpoint.max_positions
    pooling = getattr(checkpoint.model.config, "holistic_pooling", None)  # causal checkpoints only
    model_info = {"path": str(checkpoint.path), "name": checkpoint.path.resolve().name, "task": task,
                  "backbone_type": checkpoint.backbone_type, "holistic_pooling": pooling,
                  "category_labels": getattr(checkpoint.model.config, "category_labels", None)}
    split_info: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for split in splits:
        examples = prepare_examples(data_by_split.pop(split), args.data_dir, split, checkpoint, max_length,
                                    keep_suffix_on_truncation)
        truncated = sum(e.truncated for e in examples)
        if truncated:
            logger.warning("%s: %d of %d examples truncated to %d tokens", split, truncated, len(examples), max_length)
        started = time.perf_counter()
        scored = infer(checkpoint, examples, split)
        seconds[split] = round(time.perf_counter() - started, 3)
        split_info[split] = {"examples": len(examples), "harmful": sum(e.label for e in examples),
                             "response_tokens": sum(e.n_response_tokens for e in examples), "truncated": truncated,
                             "examples_per_second": round(len(examples) / max(seconds[split], 1e-9), 2)}
        write_predictions(output_dir, split, prediction_records(examples, scored), {
            "script": script, "checkpoint": portable_path(checkpoint.path), "model_task": task,
            "data_dir": portable_path(args.data_dir), "scorers": list(scorers), "holistic_pooling": pooling,
            "max_length": max_length, "truncated": truncated, "device": str(device),
            "category_labels": getattr(checkpoint.model.config, "category_labels", None),
            "dtype": str(dtype).replace("torch.", ""), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        logger.info("%s: scored %d examples in %.1f s", split, len(examples), seconds[split])

    # Metrics are computed from the files just written, never from in-memory values.
    records_by_split = {split: read_predictions(predictions_path(output_dir, split), require_scores=scorers)
                        for split in splits}
    facts = {
        "script": script,
        "arguments": asdict(args),
        "command": portable_command(sys.argv, script),
        "model": model_info,
        "data": {"data_dir": str(args.data_dir), "max_length": max_length, "splits": split_info,
                 "meta": {k: v for k, v in load_meta(args.data_dir).items() if k != "splits"}},
        "runtime": {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "batch_size": args.batch_size,
                    "inference_seconds": seconds},
    }
    summary = write_evaluation_outputs(output_dir, records_by_split, facts=facts, scorers=scorers,
                                       thresholds=thresholds, max_k=args.max_k,
                                       tolerance=args.selection_tolerance / 100,
                                       max_benign_stop_rate=args.max_benign_stop_rate)
    logger.info("wrote %s", output_dir / "report.md")
    if scorers:  # partial detection: the chosen points travel with the checkpoint (full detection chooses none)
        record_operating_point(args.model_path, summary, output_dir=args.output_dir, limit=args.limit,
                               default=args.default_operating_point)
    return summary
