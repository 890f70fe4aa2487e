"""Full detection with a causal monitor: the holistic head on each whole (prompt + response) sequence.

Evaluates a Qwen full-detection baseline (``task = qwen-full``) or the holistic head of an SCM checkpoint
(``task = scm``). Writes, in ``--output-dir``: ``predictions-<split>.jsonl`` (+ ``.meta.json``) with each
response's ``full_score``; ``metrics-full-theta<t>.json`` per threshold (as the paper's code does);
``summary.json``; ``report.md``.

Commands (``bash scripts/run-qwen-full.sh test ...`` runs the first)::

    python -m test.test_qwen_full --model-path baseline-qwen-0.5b --data-dir baseline-qwen \
        --output-dir metrics/qwen-full
    # quick look on CPU: 50 examples per split, thresholds 0.5 and 0.9
    python -m test.test_qwen_full --model-path runs/qwen-full-default \
        --data-dir .cache/data/sample-smollm2-135m-instruct \
        --output-dir runs/eval/qwen-full-quick --limit 50 --thresholds 0.5,0.9 --device cpu

Partial detection with the same checkpoint is ``python -m test.test_qwen_partial`` (``--scorer holistic``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from utils.cli import parse_dataclasses
from utils.evaluation.scoring import CAUSAL_TASKS, EvalArguments, run_evaluation, score_causal

SCRIPT = "test.test_qwen_full"


@dataclass
class QwenFullArguments(EvalArguments):
    """Flags of ``python -m test.test_qwen_full`` (all shared; see :class:`utils.evaluation.scoring.EvalArguments`)."""


def parse_args(argv: list[str] | None = None) -> QwenFullArguments:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one."""
    (args,) = parse_dataclasses((QwenFullArguments,), argv, prog=f"python -m {SCRIPT}")
    return args


def main(args: QwenFullArguments) -> dict[str, Any]:
    """Score every split with the holistic head on full sequences, then write metrics and the report.

    Returns:
        The run summary (also in ``<output_dir>/summary.json``).

    Raises:
        ValueError: bad flags or an encoder checkpoint (the message names test.test_modernbert_full).
        FileNotFoundError / DataFormatError: missing or malformed checkpoint or data.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_evaluation(
        args,
        script=SCRIPT,
        allowed_tasks=CAUSAL_TASKS,
        infer=lambda checkpoint, examples, split: score_causal(checkpoint, examples, args.batch_size, (), split),
        scorers=(),
        keep_suffix_on_truncation=False,
    )


if __name__ == "__main__":
    main(parse_args())
