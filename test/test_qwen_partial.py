"""Partial (streaming) detection with a causal monitor: every response prefix scored in one causal pass.

Because the backbone is causal, the score at response token i depends only on the prefix ending there, so one
forward pass per example gives every prefix's judgement:

- ``token``: the token scorer (softmax class 1) at each response position, the paper's inference head;
- ``holistic``: the holistic head applied at each response position, the public evaluation script's way.

A response is stopped by the delay-k rule (``utils/decision_rules.py``): at the first response token where k tokens
(cumulative) have reached theta. The run sweeps theta over ``--thresholds`` and k = 1..``--max-k`` and reports three
protocols (``utils/metrics.py``): *paper* (for each theta, the k with the best harmful-class F1 on test, tokens
labelled -100 not counted, as the paper's evaluation code does), *leak-free* ((theta, k) chosen by macro-F1 on val,
reported on test), *leak-free, early* (the smallest k, then theta, within ``--selection-tolerance`` macro-F1
points of the best on val) and *leak-free, budget* (the best val macro-F1 among the points that stop at most
``--max-benign-stop-rate`` of the benign val responses). It also reports full detection from the same pass (holistic
head on the whole sequence), token-level P/R/F1, how early harmful responses are stopped, and the F1-vs-tokens-seen
frontier. The chosen points go into the checkpoint folder too (``operating_point.json``: what streaming and the
gateway serve by default; ``docs/OPERATING-POINT.md``).

Outputs in ``--output-dir``: ``predictions-<split>.jsonl`` (+ ``.meta.json``),
``metrics-partial-<scorer>-theta<t>.json`` and ``metrics-full-theta<t>.json`` per threshold, ``summary.json``,
``report.md``, ``macro-f1-vs-k-<scorer>.png``, ``frontier-<scorer>.png``, ``stop-histogram-<scorer>.png``,
``score-traces.png``, ``recall-vs-benign-stops.png``. ``python -m utils.evaluation.rescore`` recomputes all but the predictions from the predictions files.

Commands (``bash scripts/run-scm.sh test ...`` runs the first, ``bash scripts/run-qwen-partial.sh test ...`` the
second)::

    python -m test.test_qwen_partial --scorer both --model-path scm-0.5b --data-dir scm --output-dir metrics/scm-0.5b
    python -m test.test_qwen_partial --scorer holistic --model-path baseline-qwen-0.5b --data-dir baseline-qwen \
        --output-dir metrics/qwen-partial
    # quick look on CPU
    python -m test.test_qwen_partial --model-path runs/scm-default --data-dir .cache/data/sample-smollm2-135m-instruct \
        --output-dir runs/eval/scm-quick --limit 50 --max-k 20 --device cpu
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from utils.cli import parse_dataclasses
from utils.evaluation.scoring import CAUSAL_TASKS, EvalArguments, checkpoint_task, run_evaluation, score_causal

SCRIPT = "test.test_qwen_partial"
SCORER_CHOICES = ("auto", "token", "holistic", "both")


@dataclass
class QwenPartialArguments(EvalArguments):
    """Flags of ``python -m test.test_qwen_partial``: the shared ones plus the scorer choice."""

    scorer: str = field(default="auto", metadata={
        "help": "token, holistic or both; auto = both for an scm checkpoint, holistic for qwen-full."})


def resolve_scorers(choice: str, task: str) -> list[str]:
    """The score lists to write for ``--scorer`` and the checkpoint's task.

    Raises:
        ValueError: an unknown choice, or the token scorer of a qwen-full checkpoint (trained with alpha = 0, so
            its token head was never trained).
    """
    if choice not in SCORER_CHOICES:
        raise ValueError(f"--scorer {choice!r} is unknown; use one of {', '.join(SCORER_CHOICES)}")
    if choice == "auto":
        return ["token", "holistic"] if task == "scm" else ["holistic"]
    scorers = ["token", "holistic"] if choice == "both" else [choice]
    if "token" in scorers and task != "scm":
        raise ValueError(f"--scorer {choice}: a {task!r} checkpoint was trained without the token loss (alpha = 0), "
                         f"so its token scorer is untrained; use --scorer holistic")
    return scorers


def parse_args(argv: list[str] | None = None) -> QwenPartialArguments:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one."""
    (args,) = parse_dataclasses((QwenPartialArguments,), argv, prog=f"python -m {SCRIPT}")
    return args


def main(args: QwenPartialArguments) -> dict[str, Any]:
    """Score every prefix of every split, write predictions, then metrics, plots and the report.

    Returns:
        The run summary (also in ``<output_dir>/summary.json``).

    Raises:
        ValueError: bad flags, an encoder checkpoint (the message names test.test_modernbert_partial) or a scorer the
            checkpoint cannot provide.
        FileNotFoundError / DataFormatError: missing or malformed checkpoint or data.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.scorer not in SCORER_CHOICES:
        resolve_scorers(args.scorer, "scm")  # raises the unknown-choice error before touching the checkpoint
    task = checkpoint_task(args.model_path)
    scorers = resolve_scorers(args.scorer, task) if task in CAUSAL_TASKS else ["holistic"]
    return run_evaluation(
        args,
        script=SCRIPT,
        allowed_tasks=CAUSAL_TASKS,
        infer=lambda checkpoint, examples, split: score_causal(checkpoint, examples, args.batch_size, scorers, split),
        scorers=scorers,
        keep_suffix_on_truncation=False,
    )


if __name__ == "__main__":
    main(parse_args())
