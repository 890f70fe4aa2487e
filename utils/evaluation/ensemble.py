"""Average the scores of several evaluations of the same data into one evaluation folder (a score ensemble).

Why: one CPU training of SCM on realmix moves test macro-F1 by about a point from seed to seed (94.72, 95.43 and
94.33 for seeds 42-44), as much as the gaps the quality targets ask about. Averaging the members' per-token scores
shows what the recipe reaches once that variance is averaged out, with no model run: every member's predictions
files already hold its scores. A deployed ensemble of SCM checkpoints that share their frozen lower blocks would
run those blocks once and each member's trained blocks and heads (the streaming runtime serves one checkpoint; it
does not run ensembles).

Each split is read from every member, checked to hold the same records (ids, labels, token labels, in the same
order), and written as ``predictions-<split>.jsonl`` whose scores are the members' mean (``full_score`` too when
every member has one); the folder's metrics, plots, ``summary.json`` and ``report.md`` are then computed by
:mod:`utils.evaluation.rescore` with the first member's threshold grid, k range and selection tolerance.

Command::

    python -m utils.evaluation.ensemble --runs results/realmix-prompt-3ep/scm results/realmix-prompt-3ep/scm-seed43 \\
        results/realmix-prompt-3ep/scm-seed44 --output-dir results/realmix-prompt-3ep/scm-seed-mean
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from utils.cli import parse_dataclasses
from utils.evaluation.outputs import portable_path
from utils.io_utils import DataFormatError, read_json, write_json
from utils.evaluation.predictions import (SCORE_DECIMALS, predictions_path, read_predictions, read_predictions_meta,
                               write_predictions)

SCRIPT = "utils.evaluation.ensemble"
# What must agree record by record for two members to have scored the same responses.
SAME_FIELDS = ("id", "label", "n_response_tokens", "token_labels")


@dataclass
class EnsembleArguments:
    """Arguments of ``python -m utils.evaluation.ensemble``."""

    runs: list[str] = field(metadata={"help": "Evaluation folders of the members (each holds "
                                              "predictions-<split>.jsonl for the same data), at least two."})
    output_dir: str = field(metadata={"help": "Folder for the ensemble's predictions, metrics and report."})
    splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={
        "help": "Splits to average (val chooses the leak-free operating points, test reports them)."})

    def __post_init__(self) -> None:
        if len(self.runs) < 2:
            raise ValueError(f"--runs needs at least two evaluation folders to average, got {len(self.runs)}")
        if len(set(self.runs)) != len(self.runs):
            raise ValueError(f"--runs names a folder twice ({' '.join(self.runs)}): each member counts once")


def mean_records(members: Sequence[list[dict[str, Any]]], names: Sequence[str]) -> list[dict[str, Any]]:
    """The records of one split with every score the mean of the members' scores.

    Args:
        members: each member's records of the split, in file order.
        names: each member's predictions file (for errors).

    Returns:
        One record per response: the first member's fields, scores averaged per scorer and token, ``full_score``
        averaged when every member has one (else left out), rounded as every predictions file is.

    Raises:
        DataFormatError: the members hold different records or scorers (naming the file, the record and the field).
    """
    first = members[0]
    for records, name in zip(members[1:], names[1:]):
        if len(records) != len(first):
            raise DataFormatError(f"{name}: {len(records)} records against {len(first)} in {names[0]}; the members "
                                  f"must have scored the same data (evaluate them on the same --data-dir)")
    averaged = []
    for index, group in enumerate(zip(*members)):
        base = group[0]
        for record, name in zip(group[1:], names[1:]):
            for key in SAME_FIELDS:
                if record[key] != base[key]:
                    raise DataFormatError(f"{name}, record {index}: field {key!r} differs from {names[0]}'s "
                                          f"({record[key]!r:.60} vs {base[key]!r:.60}); the members must have "
                                          f"scored the same data in the same order")
            if set(record.get("scores") or {}) != set(base.get("scores") or {}):
                raise DataFormatError(f"{name}, record {index}: scorers {sorted(record.get('scores') or {})} "
                                      f"differ from {names[0]}'s {sorted(base.get('scores') or {})}; evaluate "
                                      f"every member with the same --scorer")
        merged = {key: base[key] for key in ("id", "label", "response_start", "n_response_tokens", "token_labels")}
        if base.get("scores"):
            merged["scores"] = {scorer: [round(sum(values) / len(group), SCORE_DECIMALS) for values in
                                         zip(*(record["scores"][scorer] for record in group))]
                                for scorer in base["scores"]}
        if all("full_score" in record for record in group):
            merged["full_score"] = round(sum(record["full_score"] for record in group) / len(group), SCORE_DECIMALS)
        averaged.append(merged)
    return averaged


def main(args: EnsembleArguments) -> dict[str, Any]:
    """Write the ensemble folder and score it; returns its summary.

    Raises:
        FileNotFoundError: a member without a split's predictions. DataFormatError: members that disagree.
    """
    from utils.evaluation.rescore import rescore_run

    out = Path(args.output_dir)
    first_summary_file = Path(args.runs[0]) / "summary.json"
    first_summary = read_json(first_summary_file) if first_summary_file.is_file() else {}
    averaged: dict[str, list[dict[str, Any]]] = {}
    for split in args.splits:  # every split checked before anything is written
        files = [predictions_path(run, split) for run in args.runs]
        averaged[split] = mean_records([read_predictions(path) for path in files], [str(path) for path in files])
    members = [portable_path(run) for run in args.runs]
    scorers: list[str] = []
    for split, records in averaged.items():
        first_meta = read_predictions_meta(args.runs[0], split)
        scorers = list(first_meta.get("scorers") or sorted(records[0].get("scores") or {}))
        meta = {key: first_meta[key] for key in ("model_task", "data_dir", "max_length", "truncated",
                                                 "holistic_pooling") if key in first_meta}
        write_predictions(out, split, records, {**meta, "script": SCRIPT, "scorers": scorers,
                                                "checkpoint": str(out), "members": members})
    first_model = first_summary.get("model") or {}
    arguments = {key: value for key, value in (first_summary.get("arguments") or {}).items()
                 if key in ("thresholds", "max_k", "selection_tolerance", "scorer")}
    # The facts rescore keeps from a folder's summary: what the ensemble is, and the members' shared data.
    write_json(out / "summary.json", {
        "script": SCRIPT,
        "command": shlex.join(["python", "-m", SCRIPT, "--runs", *args.runs, "--output-dir", args.output_dir,
                               "--splits", *args.splits]),
        "arguments": {**arguments, "runs": list(args.runs), "splits": ",".join(args.splits)},
        "model": {"path": str(out), "name": out.name, "task": first_model.get("task"),
                  "backbone_type": first_model.get("backbone_type"), "members": members},
        "data": {key: value for key, value in (first_summary.get("data") or {}).items() if key != "splits"},
        "runtime": {"device": None, "dtype": None, "note": f"mean of {len(args.runs)} members' scores; no model run"},
        "scorers": scorers,
    })
    return rescore_run(out)


if __name__ == "__main__":
    try:
        arguments = parse_dataclasses((EnsembleArguments,))[0]
        main(arguments)
    except (FileNotFoundError, DataFormatError) as err:
        sys.exit(f"ensemble_predictions: {err}")
    print(f"wrote {Path(arguments.output_dir) / 'report.md'}")
