"""Train SCM (dual loss + logic consistency) or the Qwen full-detection baseline on processed FineHarm data.

The backbone is any causal LM folder ``AutoModel`` loads (the paper: Qwen2.5-0.5B/1.5B/7B base; the embedded default:
SmolLM2-135M-Instruct). Data must be processed with the backbone's own tokenizer (``scripts/run-data.sh``).

Commands (the shell drivers chain exactly these)::

    # SCM, paper hyper-parameters (3 epochs, batch 8 x accumulation 2, AdamW 1e-4, ExponentialLR 0.99/step)
    python -m train.train_qwen --task scm --data-dir scm --base-model-path /path/to/Qwen2.5-0.5B --output-dir scm-0.5b
    # Qwen full-detection baseline (holistic cross-entropy only: alpha = 0, gamma = 0)
    python -m train.train_qwen --task qwen-full --data-dir baseline-qwen --base-model-path /path/to/Qwen2.5-0.5B \
        --output-dir baseline-qwen-0.5b
    # the paper code's precision and optimiser exactly: pure-bf16 weights (no fp32 master copy, no autocast) and
    # torch.optim.AdamW over all parameters, weight decay 0.01 on every one (default: fp32 master weights, bf16
    # autocast on CUDA, no decay on biases and norms)
    python -m train.train_qwen --task scm --data-dir scm --base-model-path /path/to/Qwen2.5-0.5B --output-dir scm-0.5b \
        --paper-precision
    # multi-GPU: one process per GPU, each on its shard of the data, gradients averaged (DDP through the Trainer);
    # --per-device-train-batch-size is per process, so 8 GPUs x 8 x accumulation 2 = 128 examples per step
    accelerate launch --num_processes 8 -m train.train_qwen --task scm --data-dir scm --base-model-path ... --output-dir ...
    torchrun --nproc_per_node 8 -m train.train_qwen --task scm ...
    # DeepSpeed, as the paper's --deepspeed flag (needs `pip install deepspeed`)
    torchrun --nproc_per_node 8 -m train.train_qwen --task scm ... --deepspeed ds_zero2.json
    # CPU data parallel (gloo; accelerate launch --cpu starts one process only, so use torchrun)
    torchrun --nproc_per_node 2 -m train.train_qwen --task scm ...

Any ``transformers.TrainingArguments`` flag also works (``--max-steps 2``, ``--logging-steps 1``, ...). A run
resumes from the newest ``checkpoint-*`` in ``--output-dir`` unless ``--no-resume``; the best checkpoint (lowest
validation loss) is kept and the final folder holds model, tokenizer and ``training_summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import SCMModel
from model.modeling_qwen4dual_2CE_w_logic import CATEGORY_POSITIONS, POOLING_RULES, PAPER_POOLING, pooling_pad_id
from utils.cli import parse_dataclasses
from train.training import CommonModelArguments, PaperTrainingArguments, load_tokenizer, run_training

logger = logging.getLogger("train_qwen")

# The paper's fixed loss weights per task (its code: SCM alpha 0.6, gamma 1; Qwen full detection alpha 0, gamma 0).
TASK_LOSS_WEIGHTS = {"scm": (0.6, 1.0), "qwen-full": (0.0, 0.0)}


@dataclass
class QwenModelArguments(CommonModelArguments):
    """Model, data and method options (the paper's values are the defaults)."""

    task: str = field(default="scm", metadata={"help": "scm (dual + logic loss) or qwen-full (holistic CE only).",
                                                "choices": ["scm", "qwen-full"]})
    alpha: float | None = field(default=None, metadata={"help": "Token-CE weight; default per task (scm 0.6, qwen-full 0)."})
    gamma: float | None = field(default=None, metadata={"help": "Logic-loss weight; default per task (scm 1, qwen-full 0)."})
    logic_reduce: str = field(default="max", metadata={"help": "Token aggregation in the logic loss.",
                                                       "choices": ["max", "min", "avg"]})
    holistic_pooling: str = field(default=PAPER_POOLING, metadata={
        "help": "Where the holistic head reads a sequence: last-non-pad (the paper's: the last token whose id is not "
                "the pad id; the pad id is the tokenizer's pad, else its EOS, so with Qwen2.5 and SmolLM2 the appended "
                "EOS counts as padding) or last-attended (the last attended token, the EOS itself).",
        "choices": list(POOLING_RULES)})
    category_head: bool = field(default=False, metadata={
        "help": "Add a harm-category head (off: the paper's model). Needs data whose records carry categories "
                "(realmix2's meta.category, processed by run-data.sh); a stop then names the most likely category."})
    category_weight: float = field(default=0.5, metadata={"help": "Weight of the category cross-entropy."})
    category_positions: str = field(default="tokens", metadata={
        "help": "Where the category head learns: tokens (every harmful-labelled token of a categorised harmful "
                "response) or pooled (the holistic head's position).", "choices": list(CATEGORY_POSITIONS)})
    category_detach: bool = field(default=False, metadata={
        "help": "Train the category head on detached hidden states, so that its loss leaves the backbone (and "
                "detection) alone."})


@dataclass
class QwenTrainingArguments(PaperTrainingArguments):
    """``TrainingArguments`` with the paper's defaults for SCM / Qwen."""

    output_dir: str = field(default="runs/scm", metadata={"help": "Where checkpoints and the final model go."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (paper: 3)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device (paper: 8)."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(default=2, metadata={"help": "Gradient accumulation (paper: 2)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-4)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)."})


def parse_args(argv: list[str] | None = None) -> tuple[QwenModelArguments, QwenTrainingArguments]:
    """Parse the command line; unknown flags are an error that lists the valid ones."""
    model_args, train_args = parse_dataclasses((QwenModelArguments, QwenTrainingArguments), argv)
    return model_args, train_args


def main(model_args: QwenModelArguments, train_args: QwenTrainingArguments) -> Path:
    """Train and save; returns the output folder.

    Raises:
        FileNotFoundError / DataFormatError: bad data folder. TokenizerLoadError: backbone folder without a tokenizer.
        ValueError: bad option values.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    default_alpha, default_gamma = TASK_LOSS_WEIGHTS[model_args.task]
    alpha = default_alpha if model_args.alpha is None else model_args.alpha
    gamma = default_gamma if model_args.gamma is None else model_args.gamma
    tokenizer = load_tokenizer(model_args.base_model_path)

    def build_model(dtype: torch.dtype | None) -> SCMModel:
        return SCMModel.from_backbone(
            model_args.base_model_path,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            alpha=alpha,
            gamma=gamma,
            logic_reduce=model_args.logic_reduce,
            task=model_args.task,
            scorer="token" if model_args.task == "scm" else "holistic",
            holistic_pooling=model_args.holistic_pooling,
            pooling_pad_token_id=pooling_pad_id(tokenizer),
        )

    batch = train_args.per_device_train_batch_size
    return run_training(
        build_model,
        tokenizer,
        model_args,
        train_args,
        default_lr_decay=0.999 if batch < 4 else 0.99,
        paper_dtype=torch.bfloat16,  # the paper's code loads the Qwen backbone in bf16 and trains those weights
        with_token_labels=True,
        keep_last_id=None,
        model_info={"task": model_args.task, "alpha": alpha, "gamma": gamma, "category_head": model_args.category_head,
                    "holistic_pooling": model_args.holistic_pooling, "pooling_pad_token_id": pooling_pad_id(tokenizer)},
        logger=logger,
    )


if __name__ == "__main__":
    main(*parse_args())
