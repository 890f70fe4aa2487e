"""Full detection with the encoder baseline (the paper's ModernBERT; all-MiniLM-L6-v2 offline): the CLS-pooled
classifier on each whole (prompt + response) input.

Writes, in ``--output-dir``: ``predictions-<split>.jsonl`` (+ ``.meta.json``) with each response's ``full_score``;
``metrics-full-theta<t>.json`` per threshold; ``summary.json``; ``report.md``.

Commands (``bash scripts/run-modernbert-full.sh test ...`` runs the first)::

    python -m test.test_modernbert_full --model-path baseline_modernbert-full --data-dir baseline_modernbert \
        --output-dir metrics/modernbert-full
    python -m test.test_modernbert_full --model-path runs/encoder-default --data-dir .cache/data/sample-minilm-l6-v2 \
        --output-dir runs/eval/encoder-full-quick --limit 50 --device cpu

Truncation keeps the final SEP (as in training); ``--max-length`` is also capped by the encoder's position limit
(512 for MiniLM, 8192 for ModernBERT).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from utils.cli import parse_dataclasses
from utils.evaluation.scoring import ENCODER_TASKS, EvalArguments, run_evaluation, score_encoder_full

SCRIPT = "test.test_modernbert_full"


@dataclass
class EncoderFullArguments(EvalArguments):
    """Flags of ``python -m test.test_modernbert_full`` (the paper's scripts truncate at 4,096 tokens)."""

    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples, keeping the final SEP (paper: "
                                                            "4096); also capped by the encoder's position limit."})


def parse_args(argv: list[str] | None = None) -> EncoderFullArguments:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one."""
    (args,) = parse_dataclasses((EncoderFullArguments,), argv, prog=f"python -m {SCRIPT}")
    return args


def main(args: EncoderFullArguments) -> dict[str, Any]:
    """Classify every whole input, write predictions, then metrics and the report.

    Returns:
        The run summary (also in ``<output_dir>/summary.json``).

    Raises:
        ValueError: bad flags or a causal checkpoint (the message names test.test_qwen_full).
        FileNotFoundError / DataFormatError: missing or malformed checkpoint or data.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_evaluation(
        args,
        script=SCRIPT,
        allowed_tasks=ENCODER_TASKS,
        infer=lambda checkpoint, examples, split: score_encoder_full(checkpoint, examples, args.batch_size, split),
        scorers=(),
        keep_suffix_on_truncation=True,
    )


if __name__ == "__main__":
    main(parse_args())
