"""Train the encoder full-detection baseline (the paper's ModernBERT) on processed FineHarm data.

Any encoder ``AutoModel`` loads works: ModernBERT as in the paper, or the offline default all-MiniLM-L6-v2 (BERT).
Data must be processed with the encoder's own tokenizer (``scripts/run-data.sh baseline-modernbert ENCODER_PATH``).

Commands (the shell drivers chain exactly these)::

    # paper hyper-parameters: 1 epoch, batch 4 x accumulation 4, AdamW 2e-5, ExponentialLR 0.995 per step
    python -m train.train_modernbert --data-dir baseline_modernbert --base-model-path /path/to/ModernBERT-large \
        --output-dir baseline_modernbert-full
    # multi-GPU (DDP through the Trainer: each process trains on its shard; --deepspeed CONFIG also works)
    accelerate launch --num_processes 8 -m train.train_modernbert --data-dir ... --base-model-path ... --output-dir ...
    torchrun --nproc_per_node 8 -m train.train_modernbert --data-dir ... --base-model-path ... --output-dir ...
    # the paper code's precision and optimiser: fp32 weights, no autocast, AdamW decaying every parameter
    python -m train.train_modernbert --data-dir ... --base-model-path ... --output-dir ... --paper-precision

Any ``transformers.TrainingArguments`` flag also works. Runs resume from the newest checkpoint unless ``--no-resume``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import EncoderForSequenceClassification
from utils.cli import parse_dataclasses
from train.training import CommonModelArguments, PaperTrainingArguments, load_tokenizer, run_training

logger = logging.getLogger("train_modernbert")


@dataclass
class EncoderModelArguments(CommonModelArguments):
    """Model and data options for the encoder baseline (the paper's scripts truncate at 4,096 tokens)."""

    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples, keeping the final SEP "
                                                            "(paper: 4096; ModernBERT's context is 8192)."})


@dataclass
class EncoderTrainingArguments(PaperTrainingArguments):
    """``TrainingArguments`` with the paper's ModernBERT defaults."""

    output_dir: str = field(default="runs/baseline-modernbert", metadata={"help": "Where the model goes."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (paper: 1)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Batch size per device (paper: 4)."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Gradient accumulation (paper: 4)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate (paper: 2e-5)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})


def parse_args(argv: list[str] | None = None) -> tuple[EncoderModelArguments, EncoderTrainingArguments]:
    """Parse the command line; unknown flags are an error that suggests the closest valid one."""
    return parse_dataclasses((EncoderModelArguments, EncoderTrainingArguments), argv)


def main(model_args: EncoderModelArguments, train_args: EncoderTrainingArguments) -> Path:
    """Train and save; returns the output folder.

    Raises:
        FileNotFoundError / DataFormatError: bad data folder. TokenizerLoadError: encoder folder without a tokenizer.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokenizer = load_tokenizer(model_args.base_model_path)
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    def build_model(dtype: torch.dtype | None) -> EncoderForSequenceClassification:
        return EncoderForSequenceClassification.from_encoder(
            model_args.base_model_path, dtype=dtype, attn_implementation=model_args.attn_implementation
        )

    return run_training(
        build_model,
        tokenizer,
        model_args,
        train_args,
        default_lr_decay=0.995,
        paper_dtype=torch.float32,  # the paper's code loads ModernBERT in fp32 and trains without autocast
        with_token_labels=False,
        keep_last_id=sep,
        model_info={"task": "encoder-full"},
        logger=logger,
    )


if __name__ == "__main__":
    main(*parse_args())
