"""Validation operating points of SCM's token scorer for the recipe ablation (never reads a test split).

For each evaluation folder (``predictions-val.jsonl`` from ``scripts/run-scm.sh test ... --splits val``) it sweeps
theta (0.5 .. 0.9) and k (1 .. 50) of the delay-k rule on val and reports two points:

- best: the highest macro-F1 (ties: smallest k, then smallest theta; ``utils.metrics.best_point``);
- early: the smallest k, then the smallest theta, within ``--tolerance`` (1 point) of the best
  (``utils.metrics.earliest_within``, the evaluation's early leak-free rule).

Each with macro-F1, the mean share of tokens seen by the harmful responses it stopped (the reports' "Seen"), how many
harmful responses it stopped and how many benign ones it stopped by mistake.

Command::

    .venv/bin/python results/recipe-ablation/val_points.py --runs NAME=EVAL_DIR [NAME=EVAL_DIR ...] \\
        [--output-file results/recipe-ablation/val-points.json]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.cli import parse_dataclasses  # noqa: E402
from utils.io_utils import write_json  # noqa: E402
from utils.metrics import THRESHOLDS, best_point, earliest_within, partial_detection, sweep_partial  # noqa: E402
from utils.evaluation.predictions import predictions_path, read_predictions  # noqa: E402


@dataclass
class Arguments:
    runs: list[str] = field(metadata={"help": "NAME=EVAL_DIR pairs (folders holding predictions-val.jsonl)."})
    tolerance: float = field(default=0.01, metadata={"help": "Macro-F1 tolerance of the early point (0.01 = 1 point)."})
    scorer: str = field(default="token", metadata={"help": "Score list to sweep (SCM*: token)."})
    output_file: str | None = field(default=None, metadata={"help": "Also write the points as JSON here."})


def _point(records: list[dict[str, Any]], scorer: str, theta: float, k: int) -> dict[str, Any]:
    report = partial_detection(records, scorer, theta, k)
    harmful, benign = report["delay"]["harmful"], report["delay"]["benign"]
    return {"theta": theta, "k": k, "macro_f1": round(100 * report["macro_f1"], 2),
            "harmful_seen_pct": None if harmful["mean_share"] is None else round(100 * harmful["mean_share"], 1),
            "harmful_stopped": f"{harmful['stopped']}/{harmful['responses']}",
            "benign_stopped": f"{benign['stopped']}/{benign['responses']}"}


def val_points(eval_dir: str | Path, scorer: str = "token", tolerance: float = 0.01) -> dict[str, Any]:
    """The best and the early validation operating points of one evaluation folder.

    Raises:
        FileNotFoundError / DataFormatError: no or bad ``predictions-val.jsonl``.
    """
    records = read_predictions(predictions_path(eval_dir, "val"), require_scores=[scorer])
    sweep = sweep_partial(records, scorer, THRESHOLDS)
    best, early = best_point(sweep), earliest_within(sweep, tolerance)
    return {"best": _point(records, scorer, best.theta, best.k), "early": _point(records, scorer, early.theta, early.k)}


def main(args: Arguments) -> dict[str, Any]:
    """Print one Markdown line per run and return the points by run name."""
    out = {}
    for pair in args.runs:
        name, _, folder = pair.partition("=")
        if not folder:
            raise SystemExit(f"--runs expects NAME=EVAL_DIR, got {pair!r}")
        out[name] = points = val_points(folder, args.scorer, args.tolerance)
        b, e = points["best"], points["early"]
        print(f"| {name} | {b['macro_f1']:.2f} | {b['harmful_seen_pct']} | {b['theta']}/{b['k']} | "
              f"{e['macro_f1']:.2f} | {e['harmful_seen_pct']} | {e['theta']}/{e['k']} |")
    if args.output_file:
        write_json(args.output_file, out)
    return out


if __name__ == "__main__":
    main(*parse_dataclasses((Arguments,)))
