"""Evaluate the lexical floor (TF-IDF + logistic regression, ``train/train_lexical.py``) like any other monitor.

The floor reads the decoded processed responses (``utils/evaluation/lexical_text.py``: the data's own tokenizer, from
``meta.json`` or ``--tokenizer-path``), and goes through the project's evaluation flow (``utils/evaluation/scoring.py``), so
predictions, per-threshold metrics, ``summary.json``, plots and ``report.md`` come out as for the neural models,
with model task ``lexical``:

- ``--mode full``: the whole response's score (``full_score``): full detection, fixed and leak-free thresholds;
- ``--mode partial``: also the prefix ending at every response token (``scores["holistic"]``, the name the other
  one-score-per-prefix baselines use), with the same thresholds, delay-k sweep and protocols (paper / leak-free) as
  ``test.test_qwen_partial``. Full detection is reported from the same run.

Commands (``bash scripts/run-lexical.sh test ...`` runs them)::

    python -m test.test_lexical --mode full --model-path runs/lexical --data-dir scm --output-dir metrics/lexical-full
    python -m test.test_lexical --mode partial --model-path runs/lexical --data-dir scm \
        --output-dir metrics/lexical-partial
    python -m test.test_lexical --mode partial --model-path runs/realmix/cpu/lexical \
        --data-dir .cache/data/realmix-smollm2-TAG --output-dir runs/eval/lexical-quick --limit 50 --max-k 20

It runs on the CPU (scikit-learn); ``--device`` and ``--dtype`` do not apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.cli import parse_dataclasses
from utils.evaluation.scoring import LEXICAL_TASKS, Checkpoint, EvalArguments, check_task, run_evaluation

SCRIPT = "test.test_lexical"
MODES = ("full", "partial")


@dataclass
class LexicalEvalArguments(EvalArguments):
    """Flags of ``python -m test.test_lexical``: the shared ones, the mode and the decoding tokenizer."""

    mode: str = field(default="partial", metadata={"help": "full (whole responses) or partial (also every response "
                                                           "prefix, delay-k).", "choices": list(MODES)})
    tokenizer_path: str | None = field(default=None, metadata={
        "help": "Tokenizer that decodes the data's ids (default: the one its meta.json names)."})
    device: str = field(default="cpu", metadata={"help": "Always the CPU (scikit-learn); kept for the shared flags."})
    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples from the right (counted), "
                                                            "as the causal monitors' evaluation does by default."})


def parse_args(argv: list[str] | None = None) -> LexicalEvalArguments:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one."""
    (args,) = parse_dataclasses((LexicalEvalArguments,), argv, prog=f"python -m {SCRIPT}")
    return args


def main(args: LexicalEvalArguments) -> dict[str, Any]:
    """Score every split in the chosen mode, write predictions, then metrics, plots and the report.

    Returns:
        The run summary (also in ``<output_dir>/summary.json``).

    Raises:
        ValueError: bad flags, a neural checkpoint (the message names its script), or a tokenizer that does not fit
            the data. FileNotFoundError / DataFormatError: missing or malformed checkpoint or data.
    """
    from model.lexical import LexicalDetector
    from utils.data_process import load_tokenizer
    from utils.evaluation.lexical_text import check_tokenizer_fits, score_lexical, tokenizer_source

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.mode not in MODES:
        raise ValueError(f"--mode {args.mode!r} is unknown; use full or partial")
    if args.device != "cpu":
        raise ValueError(f"--device {args.device}: the lexical floor runs on the CPU only; leave --device out")
    check_task(args.model_path, LEXICAL_TASKS, SCRIPT)
    source = tokenizer_source(args.data_dir, args.tokenizer_path)

    def load(device, dtype) -> Checkpoint:
        tokenizer = load_tokenizer(source)
        check_tokenizer_fits(tokenizer, args.data_dir, source)
        detector = LexicalDetector.from_pretrained(args.model_path)
        return Checkpoint(model=detector, tokenizer=tokenizer, task="lexical", path=Path(args.model_path),
                          max_positions=None, pad_id=0, backbone_type="tfidf-logreg", vocab_size=len(tokenizer))

    partial = args.mode == "partial"
    return run_evaluation(
        args,
        script=SCRIPT,
        allowed_tasks=LEXICAL_TASKS,
        infer=lambda checkpoint, examples, split: score_lexical(checkpoint.model, checkpoint.tokenizer, examples,
                                                                partial, desc=split),
        scorers=("holistic",) if partial else (),
        keep_suffix_on_truncation=False,
        load_model=load,
    )


if __name__ == "__main__":
    main(parse_args())
