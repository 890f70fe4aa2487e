"""``operating_point.json``: the operating points a partial evaluation chose, recorded in the checkpoint folder so
that the checkpoint carries them to wherever it is served.

Every partial-detection evaluation (``bash scripts/run-scm.sh test``, ``run-qwen-partial.sh test``,
``run-modernbert-partial.sh test``, ``run-lexical.sh test``; all of them end in
``utils.evaluation.scoring.run_evaluation``) that scored a validation split writes it, atomically, beside the
weights (which it never touches): per scorer and per selection rule (``leak_free``, ``leak_free_early``,
``leak_free_budget``) the chosen theta and k, the rule (delay-k), the split it was chosen on with its macro-F1,
harmful recall, benign stop rate and mean share seen there, and the same numbers on the reported split. It also says
which scorer and which rule are served by default, where the point came from (the data folder and the evaluation
folder as the user gave them, never a machine's absolute path inside the repository, the command, the time) and
which file it replaced: a later evaluation, on the same data or on other data, overwrites it (the latest wins).

The streaming side reads it (``serve/operating_point.py``): ``StreamingMonitor.from_pretrained``, so
``run-serve.sh``, ``run-stream.sh`` and ``generate()``'s stopping criteria serve its default point unless flags say
otherwise. This module imports nothing heavy, so the serving side can share its names.

Format (``format_version`` 1)::

    {"schema": "scm-operating-point", "format_version": 1,
     "default": "leak_free", "scorer": "token", "rule": "delay-k",
     "points": {"leak_free": POINT, "leak_free_early": POINT, "leak_free_budget": POINT},   # the served scorer's
     "unavailable": {"leak_free_budget": "no (theta, k) of the grid stops at most 2% ..."},  # rules that chose none
     "other_scorers": {"holistic": {"points": {...}, "unavailable": {...}}},                 # SCM records both
     "max_benign_stop_rate": 0.02, "selection_tolerance": 0.01,
     "source": {"data_dir", "evaluation_dir", "driver", "script", "command", "model_task", "selected_on",
                "reported_on", "examples": {split: n}, "limit", "thresholds", "max_k"},
     "replaces": {"data_dir", "evaluation_dir", "written_at"} | null,
     "written_at": "2026-01-31T12:00:00+0000"}

    POINT = {"selection", "theta", "k", "rule", "scorer", "counting", "selected_on", "reported_on",
             "validation": {"macro_f1", "harmful_recall", "harmful_precision", "benign_stop_rate", "mean_share",
                            "mean_share_all", "n_harmful", "n_benign"},
             "test": {... the same on the reported split ...}}
    # a budget point also holds "max_benign_stop_rate". A rule that chose nothing (e.g. no point of the grid meets
    # the budget) has no POINT; "unavailable" gives the reason. "unavailable" is left out when empty.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from utils.io_utils import DataFormatError, read_json, write_json

logger = logging.getLogger("evaluation")

OPERATING_POINT_FILE = "operating_point.json"
SCHEMA = "scm-operating-point"
FORMAT_VERSION = 1
SELECTION_RULES = ("leak_free", "leak_free_early", "leak_free_budget")
# Short names a user types (--default-operating-point, --operating-point) -> the selection rules' keys.
SELECTION_ALIASES = {"leak_free": "leak_free", "leak_free_early": "leak_free_early", "budget": "leak_free_budget",
                     "leak_free_budget": "leak_free_budget"}
DELAY_K = "delay-k"
# The shell driver that evaluates (and so calibrates) each kind of checkpoint.
DRIVERS = {"scm": "bash scripts/run-scm.sh test", "qwen-full": "bash scripts/run-qwen-partial.sh test",
           "encoder-full": "bash scripts/run-modernbert-partial.sh test", "lexical": "bash scripts/run-lexical.sh test"}
_STAT_KEYS = ("macro_f1", "harmful_recall", "harmful_precision", "benign_stop_rate", "mean_share", "mean_share_all",
              "n_harmful", "n_benign")


def calibration_command(task: str | None, model_path: str = "CKPT") -> str:
    """The command that writes ``operating_point.json`` for a checkpoint of ``task`` (for messages)."""
    driver = DRIVERS.get(task or "scm", DRIVERS["scm"])
    return f"{driver} --model-path {model_path} --data-dir DATA --output-dir OUT"


def served_scorer(scorers: list[str]) -> str:
    """The scorer served by default: the token head when the run scored it (the paper serves it), else the first."""
    return "token" if "token" in scorers else scorers[0]


def _entry(partial: dict[str, Any], rule: str) -> dict[str, Any]:
    from utils.metrics import operating_stats  # numpy; the serving side only reads the file

    point = partial[rule]
    entry = {"selection": rule, "theta": point["theta"], "k": point["k"], "rule": DELAY_K, "scorer": partial["scorer"],
             "counting": point["counting"], "selected_on": partial.get("select_split"),
             "reported_on": partial.get("eval_split"),
             "validation": {key: point["selection_report"][key] for key in _STAT_KEYS},
             "test": {key: operating_stats(point["report"])[key] for key in _STAT_KEYS}}
    if "max_benign_stop_rate" in point:
        entry["max_benign_stop_rate"] = point["max_benign_stop_rate"]
    return entry


def _scorer_points(partial: dict[str, Any]) -> dict[str, Any]:
    """``{"points": {rule: POINT}, "unavailable": {rule: reason}}`` of one scorer (``unavailable`` only when some rule
    chose nothing)."""
    points = {rule: _entry(partial, rule) for rule in SELECTION_RULES if partial.get(rule)}
    unavailable = {rule: partial.get(f"{rule}_reason") or f"the evaluation chose no {rule} point"
                   for rule in SELECTION_RULES if not partial.get(rule)}
    return {"points": points, **({"unavailable": unavailable} if unavailable else {})}


def _portable(path: str | os.PathLike | None) -> str | None:
    from utils.evaluation.outputs import portable_path  # the outputs module imports the metrics (numpy)

    return portable_path(path)


def build_operating_point(
    summary: dict[str, Any],
    *,
    output_dir: str | os.PathLike,
    limit: int | None = None,
    default: str = "leak_free",
    previous: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The content of ``operating_point.json`` from an evaluation's summary (pure; nothing is written).

    Args:
        summary: the run's ``summary.json`` content (``write_evaluation_outputs``'s result).
        output_dir: the evaluation folder, as the user gave it.
        limit: ``--limit`` of the run (a partial split chose the point), recorded so a reader can tell.
        default: the rule served by default (``leak_free``, ``leak_free_early`` or ``budget``); when the run chose
            no point under it for the served scorer, ``leak_free`` is served and ``default_note`` says why.
        previous: the file this one replaces (its ``source`` and time are recorded), or None.

    Returns:
        The file's content, or None when the run chose no leak-free point (no validation split, or a full-detection
        run): such a run must not replace a calibrated file.

    Raises:
        ValueError: an unknown ``default``.
    """
    if default not in SELECTION_ALIASES:
        raise ValueError(f"unknown default operating point {default!r}; use leak_free, leak_free_early or budget")
    partial = summary.get("partial") or {}
    scorers = [name for name, result in partial.items() if result.get("leak_free")]
    if not scorers:
        return None
    scorer = served_scorer(scorers)
    served = _scorer_points(partial[scorer])
    chosen = SELECTION_ALIASES[default]
    note = None
    if chosen not in served["points"]:
        note = (f"{chosen} was asked for as the default but chose no point for the {scorer} scorer "
                f"({served['unavailable'][chosen]}); leak_free is served instead")
        chosen = "leak_free"
    data = summary.get("data") or {}
    first = partial[scorer]
    source = {
        "data_dir": data.get("data_dir"),
        "evaluation_dir": _portable(output_dir),
        "driver": DRIVERS.get((summary.get("model") or {}).get("task")),
        "script": summary.get("script"),
        "command": summary.get("command"),
        "model_task": (summary.get("model") or {}).get("task"),
        "selected_on": first.get("select_split"),
        "reported_on": first.get("eval_split"),
        "examples": {split: info.get("examples") for split, info in (data.get("splits") or {}).items()},
        "limit": limit,
        "thresholds": summary.get("thresholds"),
        "max_k": summary.get("max_k"),
    }
    replaces = None
    if previous:
        before = previous.get("source") or {}
        replaces = {"data_dir": before.get("data_dir"), "evaluation_dir": before.get("evaluation_dir"),
                    "written_at": previous.get("written_at")}
    content = {
        "schema": SCHEMA,
        "format_version": FORMAT_VERSION,
        "default": chosen,
        "scorer": scorer,
        "rule": DELAY_K,
        **served,
        "other_scorers": {name: _scorer_points(partial[name]) for name in scorers if name != scorer},
        "max_benign_stop_rate": first.get("max_benign_stop_rate"),
        "selection_tolerance": first.get("selection_tolerance"),
        "source": source,
        "replaces": replaces,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if note:
        content["default_note"] = note
    return content


def read_operating_point(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``operating_point.json`` of a checkpoint folder, checked; None when the folder has none.

    Raises:
        DataFormatError: a file that is not one (bad JSON, another schema, a newer format, no points), naming the
            fix.
    """
    path = Path(model_path) / OPERATING_POINT_FILE
    if not path.is_file():
        return None
    content = read_json(path)
    fix = f"delete it, or re-run the evaluation that writes it ({calibration_command(None, str(model_path))})"
    if not isinstance(content, dict) or content.get("schema") != SCHEMA:
        raise DataFormatError(f"{path} is not an operating-point file (schema {SCHEMA!r} expected); {fix}")
    if content.get("format_version") != FORMAT_VERSION:
        raise DataFormatError(f"{path} has format_version {content.get('format_version')!r}; this version reads "
                              f"{FORMAT_VERSION}; {fix}")
    points = content.get("points")
    if not isinstance(points, dict) or content.get("default") not in points or not isinstance(
            content.get("other_scorers", {}), dict):
        raise DataFormatError(f"{path}: no point for its default rule {content.get('default')!r}; {fix}")
    return content


def scorer_points(content: dict[str, Any], scorer: str) -> dict[str, Any] | None:
    """``{"points", "unavailable"}`` of ``scorer`` in a read ``operating_point.json``; None when it has none."""
    if scorer == content.get("scorer"):
        return {"points": content["points"], "unavailable": content.get("unavailable") or {}}
    other = (content.get("other_scorers") or {}).get(scorer)
    if other is None:
        return None
    return {"points": other.get("points") or {}, "unavailable": other.get("unavailable") or {}}


def recorded_scorers(content: dict[str, Any]) -> list[str]:
    """The scorers a read ``operating_point.json`` holds points for, the served one first."""
    return [content["scorer"], *(content.get("other_scorers") or {})]


def record_operating_point(
    model_path: str | os.PathLike,
    summary: dict[str, Any],
    *,
    output_dir: str | os.PathLike,
    limit: int | None = None,
    default: str = "leak_free",
) -> Path | None:
    """Write (atomically) the run's ``operating_point.json`` into the checkpoint folder ``model_path``, replacing
    the one there; only that file is written, never the weights or ``config.json``.

    A run that chose no leak-free point leaves the folder as it is. A folder that cannot be written (read-only
    storage) costs a warning, not the evaluation, whose own outputs are complete by then.

    Returns:
        The file's path, or None when nothing was written.
    """
    path = Path(model_path) / OPERATING_POINT_FILE
    try:
        previous = read_operating_point(model_path)
    except DataFormatError as err:
        logger.warning("replacing an unreadable %s (%s)", path, err)
        previous = None
    content = build_operating_point(summary, output_dir=output_dir, limit=limit, default=default,
                                    previous=previous)
    if content is None:
        logger.info("no validation split was scored, so no operating point was chosen: %s left as it was", path)
        return None
    try:
        write_json(path, content)
    except OSError as err:
        logger.warning("could not write %s (%s): the checkpoint will be served with its training defaults unless "
                       "--theta/--k are given", path, err)
        return None
    point = content["points"][content["default"]]
    source = content["source"]
    logger.info("wrote %s: %s scorer, %s theta %g, k %d, chosen on %s of %s%s", path, content["scorer"],
                content["default"], point["theta"], point["k"], source["selected_on"], source["data_dir"],
                "" if not previous else f" (replaces the one chosen on {(previous.get('source') or {}).get('data_dir')}"
                                        f" at {previous.get('written_at')})")
    if content.get("default_note"):
        logger.warning("%s: %s", path, content["default_note"])
    if limit is not None:
        logger.warning("%s was chosen on the first %d examples of each split (--limit): calibrate on the whole "
                       "validation split before serving", path, limit)
    return path
