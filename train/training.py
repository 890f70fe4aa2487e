"""Training plumbing shared by ``train/train_qwen.py`` and ``train/train_modernbert.py``.

- :class:`PaddingCollator`: dynamic padding (right side) of ``input_ids`` / ``token_labels`` per batch; examples are
  never padded to the maximum length, and the Trainer's length-grouped sampler keeps batches of similar lengths.
- :func:`truncate_records`: ``--max-length`` truncation, counted so it can be reported.
- :class:`MonitorTrainer`: HF Trainer through hf-mtask-trainer (per-loss logging: token, holistic, logic) with the
  transformers-5 fix (``_nested_gather`` was removed from ``Trainer``) and the paper's ExponentialLR schedule.
- Precision (``--precision``, ``--paper-precision``): by default fp32 master weights with bf16 autocast on CUDA
  (fp32 on a CPU) and the Trainer's AdamW, which does not decay biases and norm weights. ``--paper-precision``
  trains as the paper's code does: the weights themselves in the paper's dtype (bf16 for SCM/Qwen, whose backbone the
  paper loads in bf16; fp32 for the encoder), no autocast, and ``torch.optim.AdamW(model.parameters())`` with
  ``--weight-decay`` on every parameter, biases and norms included.
- Distributed data parallel through the Trainer: ``torchrun``/``accelerate launch`` start one process per device,
  each trains on its shard of every epoch, gradients are averaged, and rank 0 alone writes the final folder.
  ``--deepspeed CONFIG`` is passed to the Trainer as in the paper's code (the ``deepspeed`` package must be
  installed). On a machine without CUDA a distributed launch trains on the CPU over gloo.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from train.frozen_prefix import transformer_blocks
from utils.cli import require_at_least
from utils.io_utils import write_json
from train.speedups import TrainingSpeedups

try:
    from hf_mtask_trainer import HfMultiTaskTrainer as _BaseTrainer
except ImportError as err:  # pragma: no cover - exercised only on a broken install
    raise ImportError("hf-mtask-trainer is missing: run `bash scripts/setup.sh`") from err


# The batch key (and dataset column) of each response's harm-category index for the category head; -100: none.
CATEGORY_COLUMN = "category_labels"


@dataclass
class PaddingCollator:
    """Pad a list of processed records into a batch.

    Attributes:
        pad_token_id: id used for padding ``input_ids`` (masked out by ``attention_mask`` anyway).
        pad_to_multiple_of: round the padded length up (8 helps tensor cores on GPU; 1 on CPU).
        with_token_labels: include ``token_labels`` (the encoder baseline has none).
    """

    pad_token_id: int = 0
    pad_to_multiple_of: int = 1
    with_token_labels: bool = True

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of > 1:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        token_labels = torch.full((batch, longest), -100, dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
            if self.with_token_labels:
                token_labels[row, :n] = torch.tensor(feature["token_labels"], dtype=torch.long)
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "sequence_labels": torch.tensor([int(f["sequence_labels"]) for f in features], dtype=torch.long),
        }
        if self.with_token_labels:
            out["token_labels"] = token_labels
        if CATEGORY_COLUMN in features[0]:  # a model with a category head (--category-head)
            out[CATEGORY_COLUMN] = torch.tensor([int(f[CATEGORY_COLUMN]) for f in features], dtype=torch.long)
        return out


def truncate_records(
    records: list[dict[str, Any]], max_length: int, keep_last_id: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Cut every example to ``max_length`` tokens (from the right).

    Args:
        records: processed records.
        max_length: maximum number of tokens.
        keep_last_id: when set (the encoder's SEP), a truncated example still ends with it.

    Returns:
        ``(records, n_truncated)``; records that fit are returned unchanged.
    """
    require_at_least({"max_length": max_length}, 2, "max_length")
    out, truncated = [], 0
    for record in records:
        if len(record["input_ids"]) <= max_length:
            out.append(record)
            continue
        truncated += 1
        ids = record["input_ids"][:max_length]
        labels = record["token_labels"][:max_length]
        if keep_last_id is not None:
            ids = ids[:-1] + [keep_last_id]
            labels = labels[:-1] + [-100]
        out.append({**record, "input_ids": ids, "token_labels": labels})
    return out, truncated


def to_dataset(records: list[dict[str, Any]]):
    """A ``datasets.Dataset`` with a ``length`` column, so the length-grouped sampler does not re-measure."""
    from datasets import Dataset

    columns = {
        "input_ids": [r["input_ids"] for r in records],
        "token_labels": [r["token_labels"] for r in records],
        "sequence_labels": [int(r["sequence_labels"]) for r in records],
        "length": [len(r["input_ids"]) for r in records],
    }
    if records and CATEGORY_COLUMN in records[0]:
        columns[CATEGORY_COLUMN] = [int(r[CATEGORY_COLUMN]) for r in records]
    return Dataset.from_dict(columns)


def attach_category_head(
    model: torch.nn.Module, train_records: list[dict[str, Any]], eval_records: list[dict[str, Any]],
    weight: float, positions: str, data_dirs: Sequence[str], logger: Any, detach: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Give the model a category head over the training data's categories and index every record's category.

    Args:
        model: a fresh ``SCMModel``.
        train_records, eval_records: processed records; each must carry ``category`` (None for benign).
        weight, positions: the head's loss weight and where it learns (``--category-weight``, ``--category-positions``).
        detach: whether the head learns on detached hidden states (``--category-detach``).
        data_dirs: the ``--data-dir`` folders, for the error message.
        logger: where the category counts go.

    Returns:
        ``(train_records, eval_records, labels)``: copies of the records with ``category_labels`` (index, -100 for
        none or a validation category unseen in training), and the head's category names.

    Raises:
        ValueError: records without ``category``, or no harmful record with a category in the training split.
    """
    from collections import Counter

    from utils.data.categories import ordered_categories

    missing = sum(1 for r in train_records + eval_records if "category" not in r)
    if missing:
        raise ValueError(f"--category-head needs records with harm categories, but {missing} records of "
                         f"{', '.join(data_dirs)} have no 'category' field: process FineHarm-format data whose records "
                         "carry meta.category (realmix2) with `bash scripts/run-data.sh` (this project's version "
                         "writes it), or leave --category-head out")
    counts = Counter(r["category"] for r in train_records if r["category"] is not None)
    if not counts:
        raise ValueError(f"--category-head: no harmful training record of {', '.join(data_dirs)} names a category")
    labels = ordered_categories(counts)
    model.add_category_head(labels, weight, positions, detach=detach)
    index = {name: i for i, name in enumerate(labels)}

    def indexed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, CATEGORY_COLUMN: index.get(r["category"], -100) if r["category"] is not None else -100}
                for r in records]

    unseen = Counter(r["category"] for r in eval_records if r["category"] is not None and r["category"] not in index)
    logger.info("category head over %d categories (training responses: %s)", len(labels),
                ", ".join(f"{name} {counts[name]}" for name in labels))
    if unseen:
        logger.warning("validation categories absent from training are not scored by the category loss: %s",
                       ", ".join(f"{name} {n}" for name, n in sorted(unseen.items())))
    return indexed(train_records), indexed(eval_records), labels


def use_length_grouping(args: TrainingArguments) -> None:
    """Turn on length-grouped batches, whichever name this transformers version uses for it."""
    if hasattr(args, "train_sampling_strategy"):
        args.train_sampling_strategy = "group_by_length"
    else:  # transformers < 5.2x
        args.group_by_length = True
    args.length_column_name = "length"


PAPER_PRECISION = "paper"


def launched_distributed() -> bool:
    """Whether this process is one of several started by ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def check_deepspeed(config: str | dict | None) -> None:
    """Fail early and clearly on ``--deepspeed CONFIG`` that cannot work.

    Raises:
        ImportError: the ``deepspeed`` package is not installed.
        FileNotFoundError: ``config`` names a JSON file that does not exist.
    """
    if not config:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ImportError("--deepspeed needs the deepspeed package, which is not installed: `pip install deepspeed` "
                          "(on a CUDA machine), or train without --deepspeed (plain data parallel through torchrun "
                          "or accelerate launch)")
    if isinstance(config, str) and not config.lstrip().startswith("{") and not Path(config).is_file():
        raise FileNotFoundError(f"--deepspeed {config}: no such DeepSpeed config file; give the path of its JSON "
                                f"(e.g. a ZeRO-2 config with \"bf16\": {{\"enabled\": \"auto\"}})")


def resolve_precision(precision: str, paper_precision: bool = False) -> str:
    """Resolve ``--precision auto|bf16|fp16|fp32`` (auto = bf16 on a CUDA GPU that supports it, else fp32), or
    ``"paper"`` under ``--paper-precision`` (the weights in the paper's dtype, no autocast).

    Raises:
        ValueError: an unknown value, a half precision on a machine without CUDA, or ``--paper-precision`` together
            with an explicit ``--precision``.
    """
    if paper_precision:
        if precision not in ("auto", PAPER_PRECISION):
            raise ValueError(f"--paper-precision sets the precision itself (the paper's weight dtype, no autocast); "
                             f"drop --precision {precision}")
        return PAPER_PRECISION
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"--precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise ValueError(f"--precision {precision} needs a CUDA GPU; use --precision fp32 (or auto) on a CPU")
    return precision


def freeze_lower_layers(model: torch.nn.Module, n_layers: int) -> int:
    """Freeze the embeddings and the first ``n_layers`` transformer blocks (cheap CPU fine-tuning).

    Returns:
        The number of parameters left trainable.

    Raises:
        ValueError: when the backbone's block list cannot be found or ``n_layers`` is too large.
    """
    if n_layers <= 0:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = transformer_blocks(model)
    if n_layers > len(blocks):
        raise ValueError(f"--freeze-layers {n_layers} exceeds the backbone's {len(blocks)} layers")
    model.get_input_embeddings().requires_grad_(False)
    for block in list(blocks)[:n_layers]:
        block.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _report_metrics(state: Any, **metrics: Any) -> None:
    state.add_metrics(**metrics)


class MonitorTrainer(_BaseTrainer):
    """hf-mtask-trainer's multi-loss logging + the paper's per-step exponential learning-rate decay.

    Attributes:
        lr_decay: ExponentialLR gamma applied after every optimisation step; None uses the Trainer's own schedule
            (``--lr-scheduler-type``, ``--warmup-steps``).
    """

    def __init__(self, *args: Any, lr_decay: float | None = 0.99, paper_optimizer: bool = False, **kwargs: Any) -> None:
        self.lr_decay = lr_decay
        self.paper_optimizer = paper_optimizer
        super().__init__(*args, **kwargs)
        # hf-mtask-trainer binds `report_metrics` only when it first patches a model class, so a second trainer in
        # the same process (resume, tests, sweeps) would log nothing: bind this trainer's state explicitly.
        for module in self.model.modules():
            if getattr(module, "supports_report_metrics", False):
                module.report_metrics = functools.partial(_report_metrics, self.additional_state)

    def _nested_gather(self, tensors: Any) -> Any:
        # hf-mtask-trainer 0.0.5 calls this at every log; transformers 5.2 removed it from Trainer.
        return self.accelerator.gather(tensors)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's AdamW (no decay on biases and norms), or with ``paper_optimizer`` the paper code's
        ``torch.optim.AdamW(model.parameters())``: one group, ``--weight-decay`` on every parameter."""
        if not self.paper_optimizer:
            return super().create_optimizer(model)
        if self.optimizer is None:
            args = self.args
            self.optimizer = torch.optim.AdamW((model if model is not None else self.model).parameters(),
                                               lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                               eps=args.adam_epsilon, weight_decay=args.weight_decay)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_decay is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.ExponentialLR(
                optimizer if optimizer is not None else self.optimizer, gamma=self.lr_decay
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-*`` folder in ``output_dir`` (to resume from), or None."""
    output_dir = Path(output_dir)
    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


@dataclass
class RunSummary:
    """What a training run writes next to its checkpoint (``training_summary.json``)."""

    arguments: dict[str, Any]
    data: dict[str, Any]
    model: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)

    def write(self, output_dir: str | Path) -> None:
        import transformers

        payload = {
            **self.__dict__,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "machine": {
                "platform": platform.platform(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "threads": torch.get_num_threads(),
            },
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Paths relative to the repository, so a summary copied into results/ names no machine's folders.
        from utils.evaluation.outputs import portable_tree

        write_json(Path(output_dir) / "training_summary.json",
                   portable_tree(json.loads(json.dumps(payload, default=str))))


@dataclass
class CommonModelArguments:
    """Options shared by both training scripts (the model-specific ones live in each script)."""

    base_model_path: str = field(metadata={"help": "Local folder of the backbone (HF format)."})
    data_dir: list[str] = field(metadata={"help": "Processed data folder(s) (train.jsonl, val.jsonl) from "
                                          "scripts/run-data.sh; several folders are mixed (see --data-weights)."})
    data_weights: list[float] | None = field(default=None, metadata={"help": "One weight per --data-dir folder "
                                             "for the training split (2 = every example twice, 0.5 = a random "
                                             "half); default 1 each. Validation is concatenated unweighted."})
    served_prompt_cut_from: str | None = field(default=None, metadata={
        "help": "With --data-dir folders processed with different --max-prompt-tokens (the same examples with and "
                "without their prompt: training on both views), the folder whose prompt cut the checkpoint records "
                "and the streaming runtime applies. Default: the folders' common cut (they must agree)."})
    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples (counted and reported)."})
    limit_train: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    limit_eval: int | None = field(default=None, metadata={"help": "Use only the first N validation examples."})
    freeze_layers: int = field(default=0, metadata={"help": "Freeze embeddings + the first N blocks (cheap CPU runs)."})
    length_grouping: bool = field(default=True, metadata={
        "help": "Batch training examples of similar length (less padding). --no-length-grouping samples batches in "
                "random order, as the paper's code does (it pads every batch to 4,096 tokens instead)."})
    attn_implementation: str | None = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2."})
    lr_decay: float | None = field(default=None, metadata={"help": "ExponentialLR gamma per optimisation step."})
    lr_schedule: str = field(default="exponential", metadata={
        "help": "exponential: the paper's ExponentialLR (--lr-decay per step); trainer: the Trainer's "
                "--lr-scheduler-type (linear, cosine, ...) with --warmup-steps / --warmup-ratio.",
        "choices": ["exponential", "trainer"]})
    cache_frozen_prefix: bool = field(default=False, metadata={
        "help": "Run the --freeze-layers frozen blocks once over the data and train on their cached outputs "
                "(exact; each epoch then runs only the trained blocks). See train/frozen_prefix.py."})
    prefix_cache_dir: str | None = field(default=None, metadata={
        "help": "Keep the frozen-prefix cache here and reuse it in later runs with the same frozen weights and data "
                "(default: a temporary folder in --output-dir, deleted after training)."})
    lora_rank: int = field(default=0, metadata={
        "help": "LoRA adapters of this rank on the blocks above --freeze-layers (0: off); merged into plain "
                "weights before saving. See train/lora.py."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (scale alpha/rank); default 2 x rank."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    resume: bool = field(default=True, metadata={"help": "Resume from the newest checkpoint in --output-dir."})


@dataclass
class PaperTrainingArguments(TrainingArguments):
    """``TrainingArguments`` defaults shared by both scripts: evaluate and save every 100 steps, keep the best
    (lowest validation loss), safetensors only, TensorBoard logs, seed 42. Each script sets its own optimiser defaults."""

    eval_strategy: str = field(default="steps", metadata={"help": "Evaluate every --eval-steps."})
    eval_steps: float = field(default=100, metadata={"help": "Evaluation interval (paper: 100)."})
    save_strategy: str = field(default="steps", metadata={"help": "Save every --save-steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint interval (paper: 100)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the lowest-validation-loss model."})
    metric_for_best_model: str | None = field(default="eval_loss", metadata={"help": "Metric."})
    greater_is_better: bool | None = field(default=False, metadata={"help": "Lower eval_loss is better."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    report_to: str | None = field(default="tensorboard", metadata={"help": "tensorboard, none, ..."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the label columns."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Validation computes the loss only."})
    seed: int = field(default=42, metadata={"help": "Random seed (paper: 42)."})
    save_safetensors: bool = field(default=True, metadata={"help": "Always safetensors, never pickles."})
    precision: str = field(default="auto", metadata={
        "help": "auto (fp32 master weights with bf16 autocast on a CUDA GPU, fp32 on a CPU), bf16, fp16 or fp32 "
                "(bf16/fp16: autocast over fp32 weights). Sets --bf16/--fp16."})
    paper_precision: bool = field(default=False, metadata={
        "help": "Train as the paper's code: the weights themselves in the paper's dtype (SCM/Qwen: bf16, the "
                "backbone loaded in bf16; encoder: fp32), no autocast, and torch.optim.AdamW over all parameters "
                "with --weight-decay on every one (biases and norms included). Default: fp32 master weights, bf16 "
                "autocast on CUDA, no decay on biases and norms."})

    def __post_init__(self) -> None:
        # Resolved before TrainingArguments.__post_init__, which derives the Trainer's autocast (mixed_precision)
        # and a DeepSpeed config's "auto" precision from bf16/fp16: setting them afterwards has no effect.
        check_deepspeed(self.deepspeed)
        if launched_distributed() and not torch.cuda.is_available():
            # Without CUDA, accelerate builds a multi-process (gloo) state only when told to use the CPU; otherwise
            # it initialises a process group but leaves the Trainer non-distributed, and every rank trains alone on
            # all the data.
            self.use_cpu = True
        explicit = "bf16" if self.bf16 else "fp16" if self.fp16 else None
        if explicit and self.precision == "auto":
            self.precision = explicit
        self.precision = resolve_precision(self.precision, self.paper_precision)
        if explicit and self.precision != explicit:
            raise ValueError(f"--{explicit} contradicts --precision {self.precision}; use --precision alone")
        self.bf16 = self.precision == "bf16"
        self.fp16 = self.precision == "fp16"
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory needs an accelerator; torch warns on every epoch
        super().__post_init__()



def load_tokenizer(path: str):
    """The backbone folder's tokenizer: ``utils.data_process.load_tokenizer`` after a folder check.

    Raises:
        FileNotFoundError: not a folder. TokenizerLoadError: the folder holds no loadable tokenizer.
    """
    from utils.data_process import load_tokenizer as load_tokenizer_from

    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"--base-model-path {path} is not a folder; give a local HF model folder "
            f"(`python -m model.assets` prints the embedded SmolLM2 and MiniLM paths)"
        )
    return load_tokenizer_from(path)


def run_training(
    build_model: Any,
    tokenizer: Any,
    args: CommonModelArguments,
    train_args: TrainingArguments,
    *,
    default_lr_decay: float,
    paper_dtype: torch.dtype,
    with_token_labels: bool,
    keep_last_id: int | None,
    model_info: dict[str, Any],
    logger: Any,
) -> Path:
    """The training flow both scripts share: data, truncation, model, Trainer, resume, save, summary.

    Args:
        build_model: ``f(dtype) -> PreTrainedModel`` building the fresh model from the backbone in ``dtype``.
        tokenizer: the backbone's tokenizer (saved beside the model).
        args: common options. train_args: the Trainer's arguments.
        default_lr_decay: ExponentialLR gamma when ``--lr-decay`` is not given.
        paper_dtype: the weights' dtype under ``--paper-precision`` (the dtype the paper's code loads the model in).
        with_token_labels: whether batches carry ``token_labels``.
        keep_last_id: id kept as the last token when truncating (encoder SEP), else None.
        model_info: task facts recorded in ``training_summary.json``.
        logger: where progress messages go.

    Returns:
        The output folder (final model + tokenizer + ``training_summary.json``).
    """
    import sys
    from dataclasses import asdict

    from transformers import set_seed

    from utils.data.processed_data import load_training_data

    started = time.time()
    precision = train_args.precision
    paper = precision == PAPER_PRECISION
    if args.length_grouping:
        use_length_grouping(train_args)
    train_args.label_names = ["token_labels", "sequence_labels"] if with_token_labels else ["sequence_labels"]
    lr_decay = args.lr_decay if args.lr_decay is not None else default_lr_decay
    if args.lr_schedule != "exponential":  # the Trainer's --lr-scheduler-type instead
        lr_decay = None
    set_seed(train_args.seed)

    data = load_training_data(args.data_dir, args.data_weights, args.limit_train, args.limit_eval, train_args.seed)
    train_records, eval_records = data.train, data.val
    train_records, train_truncated = truncate_records(train_records, args.max_length, keep_last_id)
    eval_records, eval_truncated = truncate_records(eval_records, args.max_length, keep_last_id)
    if train_truncated or eval_truncated:
        logger.warning("truncated to %d tokens: %d training and %d validation examples",
                       args.max_length, train_truncated, eval_truncated)

    if paper:  # the paper's weights dtype for the whole model, heads included; no master copy, no autocast
        model = build_model(paper_dtype).to(paper_dtype)
    else:  # fp32 master weights; under --precision bf16/fp16 the Trainer autocasts
        model = build_model(None).float()
    if getattr(args, "category_head", False):
        train_records, eval_records, _ = attach_category_head(
            model, train_records, eval_records, args.category_weight, args.category_positions,
            [str(d) for d in args.data_dir], logger, detach=args.category_detach)
        train_args.label_names = [*train_args.label_names, CATEGORY_COLUMN]
    vocab = model.get_input_embeddings().num_embeddings
    data.check_vocabulary(vocab, args.base_model_path)
    if getattr(model.config, "model_type", None) == "scm":  # served by the streaming runtime, which reads it
        model.config.max_prompt_tokens = data.max_prompt_tokens(args.served_prompt_cut_from)
    trainable = freeze_lower_layers(model, args.freeze_layers)
    speedups = TrainingSpeedups(args, train_args, logger)
    # Padded positions are masked out, so any in-vocabulary id works; prefer the tokenizer's own pad/eos.
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None and t < vocab), 0)
    collator = PaddingCollator(pad_token_id=pad_id, pad_to_multiple_of=8 if torch.cuda.is_available() else 1,
                               with_token_labels=with_token_labels)
    train_dataset, eval_dataset, collator = speedups.prepare_data(
        model, train_records, eval_records, to_dataset(train_records), to_dataset(eval_records), collator)
    model, trainable = speedups.prepare_model(model, trainable)
    trainer = MonitorTrainer(
        model=model,
        args=train_args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        # No processing_class: the Trainer would rewrite the backbone config's special-token ids from the
        # tokenizer. The tokenizer is saved beside the final model below.
        lr_decay=lr_decay,
        paper_optimizer=paper,
    )
    resume_from = last_checkpoint(train_args.output_dir) if args.resume else None
    if resume_from:
        logger.info("resuming from %s", resume_from)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    eval_metrics = trainer.evaluate()
    speedups.finish(trainer)  # LoRA merged into plain weights; trainer.model is what gets saved

    output_dir = Path(train_args.output_dir)
    trainer.save_model(str(output_dir))  # every rank takes part (DeepSpeed gathers weights); rank 0 writes
    if not trainer.is_world_process_zero():
        return output_dir
    # The final folder is loaded without pickles: the Trainer's pickled arguments are recorded as JSON in
    # training_summary.json instead (checkpoint-* folders keep theirs for resuming).
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(str(output_dir))
    history = trainer.state.log_history
    RunSummary(
        arguments={"model": asdict(args), "training": train_args.to_dict(), "lr_decay": lr_decay,
                   "speedups": speedups.facts, "precision": precision,
                   "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                   "optimizer": ("torch.optim.AdamW over all parameters, weight decay on every one (paper)" if paper
                                 else "Trainer AdamW, no weight decay on biases and norms"),
                   "command": " ".join(sys.argv), "world_size": train_args.world_size,
                   "parallel_mode": train_args.parallel_mode.value,
                   "examples_per_step": train_args.world_size * train_args.per_device_train_batch_size
                   * train_args.gradient_accumulation_steps},
        data={**data.describe(),
              "train_examples": len(train_records), "val_examples": len(eval_records),
              "train_truncated": train_truncated, "val_truncated": eval_truncated, "max_length": args.max_length},
        model={**model_info, "parameters": sum(p.numel() for p in trainer.model.parameters()),
               "trainable_parameters": trainable, "backbone": args.base_model_path},
        result={"train": train_result.metrics, "eval": eval_metrics,
                "best_checkpoint": trainer.state.best_model_checkpoint,
                "first_logged_loss": next((h["loss"] for h in history if "loss" in h), None),
                "last_logged_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
                "global_step": trainer.state.global_step, "wall_seconds": round(time.time() - started, 1)},
    ).write(output_dir)
    logger.info("saved %s (%d steps, eval_loss %.4f, %.0f s)", output_dir, trainer.state.global_step,
                eval_metrics.get("eval_loss", float("nan")), time.time() - started)
    return output_dir
