"""Where a monitor's errors come from: one evaluation's operating points broken down by the source of each response.

An evaluation folder holds the scores (``predictions-<split>.jsonl``) and the operating points it chose
(``summary.json``); the sources are in the raw FineHarm-format split (``meta.source``, and ``meta.attack`` /
``meta.model``), which processing does not carry. The two are joined by position, as data processing keeps every
record in order, and every response's label is checked against the raw record's so that a folder processed from
other data is refused instead of silently mislabelled.

Per source and rule: harmful responses and the share stopped (recall), the mean share of its tokens a stopped
harmful response had shown, benign responses and the share stopped (false stops)::

    python -m utils.evaluation.by_source --run results/realmix2/scm --input-dir ../shared/data/realmix2 \\
        --output results/realmix2/scm/by-source.md
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from utils.data.fineharm import SPLIT_FILES, load_fineharm, response_label
from utils.evaluation.predictions import predictions_path, read_predictions
from utils.evaluation.report import LEAK_FREE_PROTOCOLS, PROTOCOL_LABELS
from utils.io_utils import DataFormatError, read_json, write_text
from utils.metrics import delay_statistics, stop_indices

def source_of(record: dict[str, Any], level: str) -> str:
    """``jbb`` (level ``source``) or ``jbb/GCG`` (level ``model``), ``unknown`` without ``meta.source``."""
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    source = str(meta.get("source") or "unknown")
    sub = meta.get("attack") or meta.get("model")
    return f"{source}/{sub}" if level == "model" and sub else source


def joined_sources(predictions: Sequence[dict[str, Any]], raw: Sequence[dict[str, Any]], where: str,
                   level: str) -> list[str]:
    """The source of each prediction record, by position in the raw split.

    Raises:
        DataFormatError: the counts or a response label differ (the evaluation was run on other data).
    """
    if len(predictions) != len(raw):
        raise DataFormatError(f"{where}: {len(predictions)} scored responses but {len(raw)} raw records; pass the "
                              f"--input-dir the evaluated folder was processed from")
    for index, (scored, record) in enumerate(zip(predictions, raw)):
        if int(scored["label"]) != response_label(record):
            raise DataFormatError(f"{where}, record {index} ({scored['id']}): label {scored['label']} but the raw "
                                  f"record's is {response_label(record)}; pass the --input-dir the evaluated folder "
                                  f"was processed from")
    return [source_of(record, level) for record in raw]


def source_table(records: Sequence[dict[str, Any]], sources: Sequence[str], stops: Sequence[int | None]
                 ) -> dict[str, dict[str, Any]]:
    """``{source: {"harmful", "recall", "mean_share", "benign", "benign_stops"}}`` (fractions; None when empty)."""
    table = {}
    for source in sorted(set(sources)):
        rows = [i for i, s in enumerate(sources) if s == source]
        stats = delay_statistics([records[i] for i in rows], [stops[i] for i in rows])
        table[source] = {"harmful": stats["harmful"]["responses"], "recall": stats["harmful"]["stopped_rate"],
                         "mean_share": stats["harmful"]["mean_share"], "benign": stats["benign"]["responses"],
                         "benign_stops": stats["benign"]["stopped_rate"]}
    return table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def by_source(run: str | Path, input_dir: str | Path, scorer: str = "token", level: str = "source"
              ) -> tuple[str, dict[str, Any]]:
    """The markdown tables and their data for the evaluation in ``run``.

    Raises:
        FileNotFoundError: a missing summary or predictions file. DataFormatError: see :func:`joined_sources`; no
            partial-detection point of ``scorer``.
    """
    run = Path(run)
    summary = read_json(run / "summary.json")
    points = summary.get("partial", {}).get(scorer)
    if not points:
        raise DataFormatError(f"{run / 'summary.json'}: no partial-detection points of the {scorer} scorer (there: "
                              f"{', '.join(summary.get('partial', {})) or 'none'}); pass --scorer")
    split = summary["eval_split"]
    records = read_predictions(predictions_path(run, split), require_scores=[scorer])
    raw = load_fineharm(input_dir, [split])[split]
    sources = joined_sources(records, raw, f"{predictions_path(run, split)} against "
                                           f"{Path(input_dir) / SPLIT_FILES[split]}", level)
    data: dict[str, Any] = {"run": str(run), "split": split, "scorer": scorer, "level": level, "rules": {}}
    lines = [f"# {run}: by source ({split} split, {scorer} scorer)", ""]
    for protocol, rule in LEAK_FREE_PROTOCOLS:  # the reports' rules, under the reports' names
        point = points.get(rule)
        if not point:
            continue
        stops = stop_indices(records, scorer, point["theta"], point["k"], point.get("counting", "all"))
        table = source_table(records, sources, stops)
        data["rules"][rule] = {"theta": point["theta"], "k": point["k"], "sources": table}
        lines += [f"## {PROTOCOL_LABELS[protocol]} (θ {point['theta']:g}, k {point['k']})", "",
                  "| source | harmful | harmful stopped % | seen (stopped) % | benign | benign stopped % |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {row['harmful']} | {_pct(row['recall'])} | {_pct(row['mean_share'])} | "
                  f"{row['benign']} | {_pct(row['benign_stops'])} |" for name, row in table.items()]
        lines.append("")
    return "\n".join(lines), data


@dataclass
class BySourceArguments:
    """Flags of ``python -m utils.evaluation.by_source``."""

    run: str = field(metadata={"help": "An evaluation folder (summary.json, predictions-<split>.jsonl)."})
    input_dir: str = field(metadata={"help": "The raw FineHarm-format folder the evaluated data was processed from "
                                             "(records with meta.source)."})
    output: str | None = field(default=None, metadata={"help": "Markdown file to write (default: print only)."})
    scorer: str = field(default="token", metadata={"help": "token or holistic."})
    level: str = field(default="source", metadata={"help": "source (meta.source) or model (with its attack or "
                                                           "model).", "choices": ["source", "model"]})


def main(args: BySourceArguments) -> dict[str, Any]:
    """Print (and write) the tables; return their data."""
    text, data = by_source(args.run, args.input_dir, args.scorer, args.level)
    if args.output:
        write_text(args.output, text)
    print(text)
    return data


if __name__ == "__main__":
    from utils.cli import run_entry_point

    run_entry_point(main, BySourceArguments, "python -m utils.evaluation.by_source",
                    errors=(ValueError, FileNotFoundError, DataFormatError))
