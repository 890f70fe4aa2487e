"""Partial (streaming) detection with the encoder baseline: the classifier applied to every response prefix
separately. An encoder is bidirectional, so unlike the causal SCM there is no one-pass shortcut: a response of n
tokens costs n forward passes. Prefix i is ``input_ids[:response_start + i + 1]`` followed by the SEP/EOS the data
appended (``meta.json`` ``eos_appended``), so each prefix looks like a complete input, as in training.

Prefixes are generated lazily and sorted by length inside a bounded buffer (``--batch-size`` x ``--buffer-batches``)
for dynamic padding, so memory stays bounded whatever the split size. The same delay-k sweep, protocols (paper,
leak-free, leak-free early), delay statistics and plots as ``test.test_qwen_partial`` follow, under the scorer name
``holistic``; full detection (the classifier on the whole input) is reported too.

Commands (``bash scripts/run-modernbert-partial.sh test ...`` runs the first)::

    python -m test.test_modernbert_partial --model-path baseline_modernbert-full --data-dir baseline_modernbert \
        --output-dir metrics/modernbert-partial
    python -m test.test_modernbert_partial --model-path runs/encoder-default \
        --data-dir .cache/data/sample-minilm-l6-v2 --output-dir runs/eval/encoder-partial-quick --limit 20 --device cpu
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from utils.cli import parse_dataclasses, require_at_least
from utils.evaluation.scoring import ENCODER_TASKS, EvalArguments, run_evaluation, score_encoder_prefixes

SCRIPT = "test.test_modernbert_partial"


@dataclass
class EncoderPartialArguments(EvalArguments):
    """Flags of ``python -m test.test_modernbert_partial``: the shared ones, prefix batching and the encoder's cap."""

    batch_size: int = field(default=32, metadata={"help": "Prefixes per forward pass."})
    buffer_batches: int = field(default=32, metadata={
        "help": "Prefixes sorted together for padding = batch size x this (bounds memory)."})
    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples, keeping the final SEP (paper: "
                                                            "4096); also capped by the encoder's position limit."})


def parse_args(argv: list[str] | None = None) -> EncoderPartialArguments:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one."""
    (args,) = parse_dataclasses((EncoderPartialArguments,), argv, prog=f"python -m {SCRIPT}")
    return args


def main(args: EncoderPartialArguments) -> dict[str, Any]:
    """Classify every response prefix of every split, write predictions, then metrics, plots and the report.

    Returns:
        The run summary (also in ``<output_dir>/summary.json``).

    Raises:
        ValueError: bad flags or a causal checkpoint (the message names test.test_qwen_partial).
        FileNotFoundError / DataFormatError: missing or malformed checkpoint or data.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    require_at_least(args, 1, "buffer_batches")
    return run_evaluation(
        args,
        script=SCRIPT,
        allowed_tasks=ENCODER_TASKS,
        infer=lambda checkpoint, examples, split: score_encoder_prefixes(
            checkpoint, examples, args.batch_size, args.buffer_batches, split),
        scorers=("holistic",),
        keep_suffix_on_truncation=True,
    )


if __name__ == "__main__":
    main(parse_args())
