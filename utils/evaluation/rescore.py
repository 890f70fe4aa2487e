"""Re-score evaluation folders from their predictions files: metrics JSONs, ``summary.json``, plots and
``report.md`` are recomputed without running any model.

Every metric is a pure function of the predictions files (``utils/evaluation/predictions.py``), so results can be refreshed
after a metric change, or with another threshold grid, k range or selection tolerance, in seconds. The facts a
predictions file cannot hold (the data's ``meta.json``, inference times, the command line) are kept from the
folder's previous ``summary.json`` when there is one, else taken from the predictions' ``.meta.json`` sidecars.
Re-scoring a folder with the code that wrote it reproduces its ``summary.json`` except ``written_at``.

Commands::

    python -m utils.evaluation.rescore results/realmix/scm results/realmix/qwen-full
    python -m utils.evaluation.rescore runs/eval/* --report runs/eval/report.md        # and merge them into one report
    python -m utils.evaluation.rescore runs/eval/scm --selection-tolerance 0.5 --max-k 30
    python -m utils.evaluation.rescore runs/eval/scm --max-benign-stop-rate 0.01      # another false-stop budget
    bash scripts/run-rescore.sh results/realmix/scm --report results/realmix/report.md   # the same, in the .venv

Summaries written before paths were made portable (absolute paths, the script's file as the command's first word)
are rewritten with paths relative to the repository that ran them, read from that first word; ``--repo-root``
names it when it cannot be read.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from utils.evaluation.outputs import portable_command, write_evaluation_outputs
from utils.io_utils import DataFormatError, atomic_write, read_json
from utils.metrics import MAX_BENIGN_STOP_RATE, MAX_K, SELECTION_TOLERANCE, THRESHOLDS
from utils.evaluation.predictions import predictions_path, read_predictions, read_predictions_meta

logger = logging.getLogger("rescore")

SPLIT_ORDER = ("train", "val", "test")


@dataclass
class RescoreArguments:
    """Arguments of ``python -m utils.evaluation.rescore``.

    Attributes:
        run_dirs: evaluation folders (each holds ``predictions-<split>.jsonl``).
        thresholds: comma-separated theta grid; None keeps each run's own.
        max_k: k grid upper bound; None keeps each run's own.
        selection_tolerance: early leak-free rule tolerance in macro-F1 points; None keeps each run's own.
        max_benign_stop_rate: the false-stop budget rule's budget (a share); None keeps each run's own.
        report: merged report of the re-scored folders to write (markdown); None writes none.
        repo_root: repository the recorded absolute paths belong to; None reads it from the recorded command.
    """

    run_dirs: list[str]
    thresholds: str | None = None
    max_k: int | None = None
    selection_tolerance: float | None = None
    max_benign_stop_rate: float | None = None
    report: str | None = None
    repo_root: str | None = None


def recorded_repo_root(command: str | None, script: str | None) -> str | None:
    """The repository an older summary's run was made in, read from its command line, whose first word was the
    script's absolute file (``/repo/test/test_qwen_partial.py ...`` -> ``/repo``); None when it cannot be read."""
    if not command or not script:
        return None
    try:
        first = shlex.split(command)[0]
    except (ValueError, IndexError):
        return None
    suffix = "/" + script.replace(".", "/") + ".py"
    if os.path.isabs(first) and first.endswith(suffix):
        return first[: -len(suffix)] or "/"
    return None


def _splits_in(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    recorded = (summary.get("arguments") or {}).get("splits")
    if isinstance(recorded, str):
        splits = [s.strip() for s in recorded.split(",") if s.strip()]
        if splits and all(predictions_path(run_dir, s).is_file() for s in splits):
            return splits
    found = sorted((p.name[len("predictions-"):-len(".jsonl")] for p in run_dir.glob("predictions-*.jsonl")),
                   key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no predictions-<split>.jsonl: it is not an evaluation folder; "
                                f"give the --output-dir of an evaluation (bash scripts/run-*.sh test ...)")
    return found


def _split_facts(records: list[dict[str, Any]], meta: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    info = {"examples": len(records), "harmful": sum(r["label"] for r in records),
            "response_tokens": sum(r["n_response_tokens"] for r in records),
            "truncated": meta.get("truncated", before.get("truncated", 0))}
    if "examples_per_second" in before:  # measured at inference; predictions cannot tell it
        info["examples_per_second"] = before["examples_per_second"]
    return info


def rescore_run(
    run_dir: str | os.PathLike,
    thresholds: Sequence[float] | None = None,
    max_k: int | None = None,
    tolerance_points: float | None = None,
    repo_root: str | None = None,
    max_benign_stop_rate: float | None = None,
) -> dict[str, Any]:
    """Recompute every output of one evaluation folder from its predictions files.

    Args:
        run_dir: the evaluation folder.
        thresholds, max_k, tolerance_points: override the run's own grid and selection tolerance (points).
        repo_root: repository the recorded absolute paths belong to (default: read from the recorded command, else
            this repository).
        max_benign_stop_rate: override the run's own false-stop budget (a share).

    Returns:
        The new summary (written to ``<run_dir>/summary.json``).

    Raises:
        FileNotFoundError: no predictions files. DataFormatError: invalid predictions (file, line, field named).
        ValueError: a bad grid or tolerance.
    """
    run_dir = Path(run_dir)
    summary_file = run_dir / "summary.json"
    before = read_json(summary_file) if summary_file.is_file() else {}
    if not isinstance(before, dict):
        raise DataFormatError(f"{summary_file}: expected a JSON object; delete it to re-score from the predictions "
                              f"files alone")
    splits = _splits_in(run_dir, before)
    metas = {split: read_predictions_meta(run_dir, split) for split in splits}
    last = metas[splits[-1]]
    scorers = list(before.get("scorers") or last.get("scorers") or [])
    records = {split: read_predictions(predictions_path(run_dir, split), require_scores=scorers) for split in splits}
    arguments = dict(before.get("arguments") or {})
    grid = list(thresholds) if thresholds is not None else before.get("thresholds") or list(THRESHOLDS)
    k_max = max_k if max_k is not None else before.get("max_k") or MAX_K
    if k_max < 1:
        raise ValueError(f"--max-k must be >= 1, got {k_max}")
    points = tolerance_points if tolerance_points is not None else arguments.get("selection_tolerance",
                                                                              100 * SELECTION_TOLERANCE)
    if not (math.isfinite(points) and 0.0 <= points <= 100.0):
        raise ValueError(f"--selection-tolerance is in macro-F1 points, from 0 to 100, got {points}")
    budget = max_benign_stop_rate if max_benign_stop_rate is not None else arguments.get(
        "max_benign_stop_rate", MAX_BENIGN_STOP_RATE)
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and 0.0 <= budget <= 1.0):
        raise ValueError(f"--max-benign-stop-rate is a share of benign responses from 0 to 1 (e.g. 0.02), got {budget}")
    # The recorded flags change only where this call overrides them (or predates them), so that re-scoring with
    # the code that wrote a folder reproduces its summary.
    if thresholds is not None or "thresholds" not in arguments:
        arguments["thresholds"] = ",".join(f"{t:g}" for t in grid)
    if max_k is not None or "max_k" not in arguments:
        arguments["max_k"] = k_max
    if tolerance_points is not None or "selection_tolerance" not in arguments:
        arguments["selection_tolerance"] = points
    if max_benign_stop_rate is not None or "max_benign_stop_rate" not in arguments:
        arguments["max_benign_stop_rate"] = budget
    script = before.get("script") or last.get("script")
    model = dict(before.get("model") or {})
    if not model:
        checkpoint = last.get("checkpoint")
        model = {"path": checkpoint, "name": Path(checkpoint).name if checkpoint else None,
                 "task": last.get("model_task"), "backbone_type": None}
    data = dict(before.get("data") or {"data_dir": last.get("data_dir"), "max_length": last.get("max_length"),
                                       "meta": {}})
    recorded_splits = data.get("splits") or {}
    data["splits"] = {split: _split_facts(records[split], metas[split], recorded_splits.get(split, {}))
                      for split in splits}
    runtime = before.get("runtime") or {"device": last.get("device"), "dtype": last.get("dtype")}
    command = before.get("command")
    root = repo_root or recorded_repo_root(command, script)
    if command and script:
        command = portable_command(shlex.split(command), script, root)
    facts = {"script": script, "arguments": arguments, "command": command, "model": model, "data": data,
             "runtime": runtime}
    summary = write_evaluation_outputs(run_dir, records, facts=facts, scorers=scorers, thresholds=grid,
                                       max_k=k_max, tolerance=points / 100, root=root,
                                       max_benign_stop_rate=budget)
    _remove_stale_outputs(run_dir, before, summary)
    return summary


def _remove_stale_outputs(run_dir: Path, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Delete metrics and plot files the previous summary listed and the new one does not (e.g. a threshold that
    left the grid), so that the folder holds only what its summary describes."""
    old = set((before.get("files") or {}).get("metrics") or []) | set(before.get("plots") or [])
    new = set(after["files"]["metrics"]) | set(after["plots"])
    for name in sorted(old - new):
        if "/" in name or not name.startswith(("metrics-", "macro-f1-", "stop-histogram-", "score-traces",
                                                "frontier-", "recall-vs-benign-stops")):
            continue  # only files an evaluation writes, never a path elsewhere
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
            logger.info("removed stale %s", run_dir / name)


def parse_args(argv: list[str] | None = None) -> RescoreArguments:
    """Parse the command line (argparse: the folders are positional)."""
    parser = argparse.ArgumentParser(prog="python -m utils.evaluation.rescore", description="Recompute the metrics, "
                                     "summary.json, plots and report.md of evaluation folders from their "
                                     "predictions files (no model is run).")
    parser.add_argument("run_dirs", nargs="+", help="evaluation folders (each holds predictions-<split>.jsonl)")
    parser.add_argument("--thresholds", default=None, help="comma-separated theta grid (default: each run's own)")
    parser.add_argument("--max-k", "--max_k", dest="max_k", type=int, default=None,
                        help="delay-k sweep upper bound (default: each run's own)")
    parser.add_argument("--selection-tolerance", "--selection_tolerance", dest="selection_tolerance", type=float,
                        default=None, help="early leak-free rule tolerance in macro-F1 points (default: each run's "
                                           f"own, else {100 * SELECTION_TOLERANCE:g})")
    parser.add_argument("--max-benign-stop-rate", "--max_benign_stop_rate", dest="max_benign_stop_rate", type=float,
                        default=None, help="false-stop budget of the leak_free_budget rule, a share of the benign "
                                           f"validation responses (default: each run's own, else "
                                           f"{MAX_BENIGN_STOP_RATE:g})")
    parser.add_argument("--report", default=None, help="also write the merged report of these folders to this file")
    parser.add_argument("--repo-root", "--repo_root", dest="repo_root", default=None,
                        help="repository the recorded absolute paths belong to (default: read from the recorded "
                             "command, else this repository)")
    return RescoreArguments(**vars(parser.parse_args(argv)))


def main(args: RescoreArguments) -> list[dict[str, Any]]:
    """Re-score every folder, then write the merged report when asked; returns the new summaries.

    Raises:
        ValueError / FileNotFoundError / DataFormatError: bad flags or folders, with the fix.
    """
    from utils.evaluation.report import merged_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    thresholds = None
    if args.thresholds is not None:
        from utils.evaluation.scoring import parse_thresholds  # the evaluation flag's own parser; it imports torch

        thresholds = parse_thresholds(args.thresholds)
    summaries = []
    for run_dir in args.run_dirs:
        summaries.append(rescore_run(run_dir, thresholds, args.max_k, args.selection_tolerance, args.repo_root,
                                     args.max_benign_stop_rate))
        logger.info("re-scored %s", run_dir)
    if args.report:
        with atomic_write(args.report) as handle:
            handle.write(merged_report(args.run_dirs))
        logger.info("wrote %s", args.report)
    return summaries


if __name__ == "__main__":
    main(parse_args())
