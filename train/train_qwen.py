"""Train SCM (dual loss + logic consistency) or the Qwen full-detection baseline on processed FineHarm data.

The backbone is any causal LM folder ``AutoModel`` loads (the paper: Qwen2.5-0.5B/1.5B/7B base; the embedded default:
SmolLM2-135M-Instruct). Data must be processed with the backbone's own tokenizer (``scripts/run-data.sh``).

Commands (the shell drivers chain exactly these)::

    # SCM, paper hyper-parameters (3 epochs, batch 8 x accumulation 2, AdamW 1e-4, ExponentialLR 0.99/step)
    python -m train.train_qwen --task scm --data-dir scm --base-model-path /path/to/Qwen2.5-0.5B --output-dir scm-0.5b
    # Qwen full-detection baseline (holistic cross-entropy only: alpha = 0, gamma = 0)
    python -m train.train_qwen --task qwen-full --data-dir baseline-qwen --base-model-path /path/to/Qwen2.5-0.5B \
        --output-dir baseline-qwen-0.5b
    # multi-GPU (data parallel through the Trainer's accelerate integration)
    accelerate launch --num_processes 8 -m train.train_qwen --task scm --data-dir scm --base-model-path ... --output-dir ...
    torchrun --nproc_per_node 8 -m train.train_qwen --task scm ...

Any ``transformers.TrainingArguments`` flag also works (``--max-steps 2``, ``--logging-steps 1``, ...). A run
resumes from the newest ``checkpoint-*`` in ``--output-dir`` unless ``--no-resume``; the best checkpoint (lowest
validation loss) is kept and the final folder holds model, tokenizer and ``training_summary.json``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainingArguments, set_seed

from model import SCMModel
from utils.cli import parse_dataclasses
from utils.processed_data import check_vocabulary, load_meta, load_split
from utils.training import (
    MonitorTrainer,
    PaddingCollator,
    RunSummary,
    freeze_lower_layers,
    last_checkpoint,
    resolve_precision,
    to_dataset,
    truncate_records,
    use_length_grouping,
)

logger = logging.getLogger("train_qwen")

# The paper's fixed loss weights per task (DESIGN: SCM alpha 0.6, gamma 1; Qwen full detection alpha 0, gamma 0).
TASK_LOSS_WEIGHTS = {"scm": (0.6, 1.0), "qwen-full": (0.0, 0.0)}


@dataclass
class QwenModelArguments:
    """Model, data and method options (the paper's values are the defaults)."""

    base_model_path: str = field(metadata={"help": "Local folder of the causal backbone (HF format), e.g. Qwen2.5-0.5B."})
    data_dir: str = field(metadata={"help": "Processed data folder (train.jsonl, val.jsonl) from scripts/run-data.sh."})
    task: str = field(default="scm", metadata={"help": "scm (dual + logic loss) or qwen-full (holistic CE only).",
                                                "choices": ["scm", "qwen-full"]})
    alpha: float | None = field(default=None, metadata={"help": "Token-CE weight; default per task (scm 0.6, qwen-full 0)."})
    gamma: float | None = field(default=None, metadata={"help": "Logic-loss weight; default per task (scm 1, qwen-full 0)."})
    logic_reduce: str = field(default="max", metadata={"help": "Token aggregation in the logic loss.",
                                                       "choices": ["max", "min", "avg"]})
    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples (counted and reported)."})
    limit_train: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    limit_eval: int | None = field(default=None, metadata={"help": "Use only the first N validation examples."})
    freeze_layers: int = field(default=0, metadata={"help": "Freeze embeddings + the first N blocks (cheap CPU runs)."})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32."})
    attn_implementation: str | None = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2."})
    lr_decay: float | None = field(default=None, metadata={"help": "ExponentialLR gamma per step; default 0.99 "
                                                                    "(0.999 when the batch size is below 4)."})
    resume: bool = field(default=True, metadata={"help": "Resume from the newest checkpoint in --output-dir."})


@dataclass
class QwenTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the paper's defaults for SCM / Qwen."""

    output_dir: str = field(default="runs/scm", metadata={"help": "Where checkpoints and the final model go."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (paper: 3)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device (paper: 8)."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(default=2, metadata={"help": "Gradient accumulation (paper: 2)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-4)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)."})
    eval_strategy: str = field(default="steps", metadata={"help": "Evaluate every --eval-steps."})
    eval_steps: float = field(default=100, metadata={"help": "Evaluation interval in steps (paper: 100)."})
    save_strategy: str = field(default="steps", metadata={"help": "Save every --save-steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint interval in steps (paper: 100)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best is always kept)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the lowest-validation-loss model."})
    metric_for_best_model: str | None = field(default="eval_loss", metadata={"help": "Selection metric."})
    greater_is_better: bool | None = field(default=False, metadata={"help": "Lower eval_loss is better."})
    logging_steps: float = field(default=10, metadata={"help": "Log (losses, lr) every N steps."})
    report_to: str | None = field(default="tensorboard", metadata={"help": "tensorboard, none, ..."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep token_labels/sequence_labels."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Validation computes the loss only."})
    seed: int = field(default=42, metadata={"help": "Random seed (paper: 42)."})
    save_safetensors: bool = field(default=True, metadata={"help": "Always safetensors, never pickles."})


def parse_args(argv: list[str] | None = None) -> tuple[QwenModelArguments, QwenTrainingArguments]:
    """Parse the command line; unknown flags are an error that lists the valid ones."""
    model_args, train_args = parse_dataclasses((QwenModelArguments, QwenTrainingArguments), argv)
    return model_args, train_args


def main(model_args: QwenModelArguments, train_args: QwenTrainingArguments) -> Path:
    """Train and save; returns the output folder.

    Raises:
        FileNotFoundError / DataFormatError: bad data folder. OSError: backbone folder that does not load.
        ValueError: bad option values.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    default_alpha, default_gamma = TASK_LOSS_WEIGHTS[model_args.task]
    alpha = default_alpha if model_args.alpha is None else model_args.alpha
    gamma = default_gamma if model_args.gamma is None else model_args.gamma
    precision = resolve_precision(train_args, model_args.precision)
    use_length_grouping(train_args)
    train_args.label_names = ["token_labels", "sequence_labels"]
    batch = train_args.per_device_train_batch_size
    lr_decay = model_args.lr_decay if model_args.lr_decay is not None else (0.999 if batch < 4 else 0.99)
    set_seed(train_args.seed)

    if not Path(model_args.base_model_path).is_dir():
        raise FileNotFoundError(
            f"--base-model-path {model_args.base_model_path} is not a folder; give a local HF model folder "
            f"(`python -m utils.assets` prints the embedded SmolLM2 path)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_args.base_model_path)
    except Exception as err:  # tokenizers raise many types; the path is what the user must fix
        raise OSError(f"cannot load a tokenizer from {model_args.base_model_path}: {err}") from err

    train_records = load_split(model_args.data_dir, "train", model_args.limit_train)
    eval_records = load_split(model_args.data_dir, "val", model_args.limit_eval)
    train_records, train_truncated = truncate_records(train_records, model_args.max_length)
    eval_records, eval_truncated = truncate_records(eval_records, model_args.max_length)
    if train_truncated or eval_truncated:
        logger.warning("truncated to %d tokens: %d training and %d validation examples",
                       model_args.max_length, train_truncated, eval_truncated)

    dtype = torch.bfloat16 if precision == "bf16" else (torch.float16 if precision == "fp16" else torch.float32)
    model = SCMModel.from_backbone(
        model_args.base_model_path,
        dtype=torch.float32 if precision == "fp32" else dtype,
        attn_implementation=model_args.attn_implementation,
        alpha=alpha,
        gamma=gamma,
        logic_reduce=model_args.logic_reduce,
        task=model_args.task,
        scorer="token" if model_args.task == "scm" else "holistic",
    )
    # Mixed precision keeps fp32 master weights; the Trainer autocasts to bf16/fp16.
    model.float()
    check_vocabulary(train_records + eval_records, model.get_input_embeddings().num_embeddings,
                     model_args.data_dir, model_args.base_model_path)
    trainable = freeze_lower_layers(model, model_args.freeze_layers)
    if train_args.gradient_checkpointing:
        model.config.use_cache = False

    # Padded positions are masked out, so any in-vocabulary id works; prefer the tokenizer's own pad/eos.
    vocab = model.get_input_embeddings().num_embeddings
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None and t < vocab), 0)
    collator = PaddingCollator(pad_token_id=pad_id, pad_to_multiple_of=8 if torch.cuda.is_available() else 1)
    trainer = MonitorTrainer(
        model=model,
        args=train_args,
        data_collator=collator,
        train_dataset=to_dataset(train_records),
        eval_dataset=to_dataset(eval_records),
        # No processing_class: the Trainer would rewrite the backbone config's special-token ids from the
        # tokenizer. The tokenizer is saved beside the final model below.
        lr_decay=lr_decay,
    )
    resume_from = last_checkpoint(train_args.output_dir) if model_args.resume else None
    if resume_from:
        logger.info("resuming from %s", resume_from)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    eval_metrics = trainer.evaluate()

    output_dir = Path(train_args.output_dir)
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    log_history = trainer.state.log_history
    RunSummary(
        arguments={"model": asdict(model_args), "training": train_args.to_dict(), "lr_decay": lr_decay,
                   "precision": precision, "command": " ".join(sys.argv)},
        data={"data_dir": str(model_args.data_dir), "meta": load_meta(model_args.data_dir),
              "train_examples": len(train_records), "val_examples": len(eval_records),
              "train_truncated": train_truncated, "val_truncated": eval_truncated,
              "max_length": model_args.max_length},
        model={"task": model_args.task, "alpha": alpha, "gamma": gamma,
               "parameters": sum(p.numel() for p in model.parameters()), "trainable_parameters": trainable,
               "backbone": model_args.base_model_path},
        result={"train": train_result.metrics, "eval": eval_metrics,
                "best_checkpoint": trainer.state.best_model_checkpoint,
                "first_logged_loss": next((h["loss"] for h in log_history if "loss" in h), None),
                "last_logged_loss": next((h["loss"] for h in reversed(log_history) if "loss" in h), None),
                "global_step": trainer.state.global_step, "wall_seconds": round(time.time() - started, 1)},
    ).write(output_dir)
    eval_loss = eval_metrics.get("eval_loss", math.nan)
    logger.info("saved %s (%d steps, eval_loss %.4f, %.0f s)", output_dir, trainer.state.global_step, eval_loss,
                time.time() - started)
    return output_dir


if __name__ == "__main__":
    main(*parse_args())
