"""Everything an evaluation writes after its predictions files: one metrics JSON per threshold, the plots,
``summary.json`` and ``report.md``.

All of it is a pure function of the predictions files and of the facts the run recorded about itself (checkpoint,
data, arguments, run time), so the evaluation entry points (``utils/evaluation/scoring.py``) and re-scoring
(``utils/evaluation/rescore.py``) share this one function and cannot drift apart. Every file is written atomically, and
``summary.json`` last: a run interrupted here keeps its previous summary.

Paths in summaries and reports are portable (:func:`portable_path`): a path the user gave relative stays as given,
an absolute one is written relative to the repository, never as a machine's absolute path.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any, Sequence

from utils.io_utils import REPO_ROOT, write_json
from utils.metrics import MAX_BENIGN_STOP_RATE, SELECTION_TOLERANCE, evaluate_records, theta_key

SUMMARY_FORMAT_VERSION = 2
FIXED_THETA = 0.5


def portable_path(path: str | os.PathLike | None, root: str | os.PathLike | None = None) -> str | None:
    """A path as a report may show it: relative paths unchanged (as the user gave them), absolute ones relative to
    the repository ``root`` (``/repo/.cache/data/x`` -> ``.cache/data/x``, ``/shared/data`` -> ``../shared/data``).

    Args:
        path: the path, or None.
        root: the repository the path belongs to (default: this one).

    Returns:
        The portable form, or None for None.
    """
    if path is None:
        return None
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    try:
        return os.path.relpath(text, os.fspath(root or REPO_ROOT))
    except ValueError:  # another drive (Windows): no relative form exists; the name is what a reader needs
        return Path(text).name


def portable_command(argv: Sequence[str], script: str, root: str | os.PathLike | None = None) -> str:
    """The command line as a user would type it: ``python -m <script>`` and portable path arguments.

    Args:
        argv: ``sys.argv`` of the run (its first item is the script's file, which ``python -m`` made absolute).
        script: the entry point's module name.
        root: the repository the paths belong to.
    """
    words = list(argv)
    if words and words[0].endswith(".py"):
        words = ["python", "-m", script, *words[1:]]
    return shlex.join(portable_path(word, root) if os.path.isabs(word) else word for word in words)


def portable_tree(value: Any, root: str | os.PathLike | None = None) -> Any:
    """A copy of a JSON-like value with every absolute path in it made portable, however deeply it is nested: a
    string that is an absolute path, and each absolute word of a command line (a string with spaces). A run's facts
    (arguments, model, data and its meta.json), training summaries and data descriptions all nest paths.
    """
    if isinstance(value, dict):
        return {key: portable_tree(item, root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_tree(item, root) for item in value]
    if not isinstance(value, str) or "/" not in value:
        return value
    if os.path.isabs(value) and not any(c.isspace() for c in value):
        return portable_path(value, root)
    words = value.split(" ")
    if any(os.path.isabs(word) for word in words):
        return " ".join(portable_path(word, root) if os.path.isabs(word) else word for word in words)
    return value


def _by_k(sweep_json: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: sweep_json[name][key] for name in ("macro_f1", "harmful_f1", "mean_share_all")}


def write_metric_files(output_dir: Path, metrics: dict[str, Any], thresholds: Sequence[float]) -> list[str]:
    """One JSON per threshold, as the paper's code writes them: ``metrics-full-theta<t>.json`` and
    ``metrics-partial-<scorer>-theta<t>.json``. Returns the file names.

    A partial file holds, for its threshold, the paper protocol's point (k by harmful F1 on the reported split,
    labelled tokens), the leak-free point for that threshold (k by validation macro-F1, every token), the metrics
    for every k under both countings, and token-level P/R/F1.
    """
    names = []
    full_thresholds = thresholds if metrics["full"] else ()  # full-detection files need full scores
    for theta in full_thresholds:
        key = theta_key(theta)
        name = f"metrics-full-theta{key}.json"
        write_json(output_dir / name, {
            "mode": "full", "theta": theta, "eval_split": metrics["eval_split"],
            "splits": {split: reports[key] for split, reports in metrics["full_by_split"].items()},
        })
        names.append(name)
    for scorer, partial in metrics["partial"].items():
        for theta in thresholds:
            key = theta_key(theta)
            name = f"metrics-partial-{scorer}-theta{key}.json"
            per_theta = partial["leak_free_per_theta"] or {}
            write_json(output_dir / name, {
                "mode": "partial", "scorer": scorer, "theta": theta, "eval_split": partial["eval_split"],
                "select_split": partial["select_split"],
                "protocols": {name: metrics["protocols"][name] for name in ("paper", "leak_free")},
                "paper": partial["paper"][key], "leak_free": per_theta.get(key),
                "by_k": {
                    "all_tokens": {split: _by_k(grid, key) for split, grid in partial["sweep"].items()},
                    "labelled_tokens": {partial["eval_split"]: _by_k(partial["paper_sweep"], key)},
                },
                "token_level": {split: reports[key] for split, reports in metrics["token_level"][scorer].items()},
            })
            names.append(name)
    return names


def write_evaluation_outputs(
    output_dir: str | os.PathLike,
    records_by_split: dict[str, list[dict[str, Any]]],
    *,
    facts: dict[str, Any],
    scorers: Sequence[str],
    thresholds: Sequence[float],
    max_k: int,
    tolerance: float = SELECTION_TOLERANCE,
    root: str | os.PathLike | None = None,
    max_benign_stop_rate: float = MAX_BENIGN_STOP_RATE,
) -> dict[str, Any]:
    """Metrics JSONs, plots, ``summary.json`` and ``report.md`` of an evaluation folder from its predictions.

    Args:
        output_dir: the evaluation folder (holds the predictions files).
        records_by_split: validated prediction records per split, in the order the splits were scored.
        facts: what the run recorded about itself: ``script``, ``arguments`` (the flags as a dict), ``command``,
            ``model`` (path, name, task, backbone_type), ``data`` (data_dir, max_length, splits, meta), ``runtime``.
        scorers: per-prefix score names (empty for full detection).
        thresholds: theta grid. max_k: k grid is 1..max_k.
        tolerance: the early leak-free rule's validation macro-F1 tolerance (fraction; 0.01 = one point).
        root: the repository the recorded absolute paths belong to (default: this one).
        max_benign_stop_rate: the false-stop budget rule's budget (share of benign validation responses stopped).

    Returns:
        The summary (also written to ``<output_dir>/summary.json``).
    """
    from utils.evaluation.categories import category_summary, has_category_labels, write_category_plots
    from utils.evaluation.plots import write_partial_plots
    from utils.evaluation.report import summary_rows, write_run_report

    output_dir = Path(output_dir)
    facts = portable_tree(facts, root)
    metrics = evaluate_records(records_by_split, scorers, thresholds, max_k, FIXED_THETA, tolerance,
                               max_benign_stop_rate)
    metric_files = write_metric_files(output_dir, metrics, thresholds)
    plots = write_partial_plots(output_dir, metrics, records_by_split[metrics["eval_split"]])
    summary = {
        "format_version": SUMMARY_FORMAT_VERSION,
        "script": facts.get("script"),
        "arguments": facts.get("arguments") or {},
        "command": facts.get("command"),
        "model": facts.get("model") or {},
        "data": facts.get("data") or {},
        "eval_split": metrics["eval_split"],
        "select_split": metrics["select_split"],
        "thresholds": [float(t) for t in thresholds],
        "max_k": int(max_k),
        "selection_tolerance": float(tolerance),
        "max_benign_stop_rate": float(max_benign_stop_rate),
        "scorers": list(scorers),
        "protocols": metrics["protocols"],
        "full": metrics["full"],
        "partial": metrics["partial"],
        "token_level": metrics["token_level"],
        "runtime": facts.get("runtime") or {},
        "files": {"predictions": [f"predictions-{split}.jsonl" for split in records_by_split],
                  "metrics": metric_files},
        "plots": plots,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    eval_records = records_by_split[metrics["eval_split"]]
    if scorers and has_category_labels(eval_records):  # data labelled with harm categories (realmix2)
        summary["categories"] = category_summary(eval_records, metrics["partial"],
                                                 (summary["model"] or {}).get("category_labels"))
        summary["plots"] = list(summary["plots"]) + write_category_plots(output_dir, summary)
    summary["rows"] = summary_rows(summary)
    write_run_report(output_dir, summary)
    write_json(output_dir / "summary.json", summary)
    return summary
