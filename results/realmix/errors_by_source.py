"""Where each monitor errs on realmix test, by source: harmful responses it let through and benign ones it stopped.

realmix's eight sources differ in how separable they are (the floor and SCM both stop every benign answer of the
prompt-with-random-search attack), so a macro-F1 gap of a point or two is a handful of responses of one or two
sources. This table names them. It reads each evaluation folder's ``summary.json`` (the leak-free operating points
chosen on validation) and ``predictions-test.jsonl``, and realmix's ``test_new.json`` for the records' sources
(processed data keep no source; the predictions are in the test file's order, which is checked by the labels).

Command (from the repository root; realmix is never copied into the project)::

    .venv/bin/python results/realmix/errors_by_source.py \\
        --runs scm=results/realmix/scm lexical=results/realmix/lexical-partial \\
        --output-file results/realmix/errors-by-source.md

A partial-mode folder gives its ``best`` and ``early`` leak-free points (of the token scorer when the folder has it,
else of the holistic one); a folder with whole-response scores also gives its leak-free threshold.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.cli import parse_dataclasses  # noqa: E402
from utils.io_utils import DataFormatError, atomic_write, read_json  # noqa: E402
from utils.data.fineharm import response_label  # noqa: E402
from utils.evaluation.loso import source_key  # noqa: E402
from utils.metrics import stop_indices  # noqa: E402
from utils.evaluation.predictions import predictions_path, read_predictions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Arguments:
    runs: list[str] = field(metadata={"help": "NAME=EVAL_DIR pairs (folders of scripts/run-*.sh test, val and test)."})
    realmix_dir: str = field(default=str(REPO.parent / "shared" / "data" / "realmix"),
                             metadata={"help": "realmix folder (its test_new.json names each record's source)."})
    output_file: str | None = field(default=None, metadata={"help": "Also write the markdown table here."})


def decisions(eval_dir: str | Path) -> tuple[list[bool], dict[str, list[bool]]]:
    """The test labels of one evaluation folder, and each leak-free point -> whether it flags each test record.

    Partial mode: the best and early points of the token scorer (else the holistic one); full mode (and a partial
    folder's whole-response scores): the leak-free threshold.

    Raises:
        FileNotFoundError / DataFormatError: a missing or incomplete folder.
    """
    summary = read_json(Path(eval_dir) / "summary.json")
    records = read_predictions(predictions_path(eval_dir, "test"))
    points: dict[str, list[bool]] = {}
    partial = summary.get("partial") or {}
    if partial:
        scorer = "token" if "token" in partial else next(iter(partial))
        for rule, key in (("best", "leak_free"), ("early", "leak_free_early")):
            point = partial[scorer].get(key)
            if point is None:
                raise DataFormatError(f"{eval_dir}/summary.json: no {key} point; evaluate with --splits val,test")
            stops = stop_indices(records, scorer, point["theta"], point["k"], point.get("counting", "all"))
            points[f"{scorer} {rule} (θ{point['theta']} k{point['k']})"] = [s is not None for s in stops]
    point = (summary.get("full") or {}).get("leak_free")
    if point is not None and all("full_score" in r for r in records):
        points[f"full (θ{point['theta']})"] = [r["full_score"] >= point["theta"] for r in records]
    if not points:
        raise DataFormatError(f"{eval_dir}/summary.json: no leak-free point; evaluate with --splits val,test")
    return [bool(r["label"]) for r in records], points


def error_table(runs: dict[str, str | Path], realmix_dir: str | Path) -> str:
    """Markdown: one row per (source, class) with its number of responses, one column per run and point, cells the
    responses that point gets wrong.

    Raises:
        DataFormatError: predictions that do not follow realmix's test file (count or labels).
    """
    test_file = Path(realmix_dir) / "test_new.json"
    test = read_json(test_file)
    sources = [source_key(r, f"{test_file}, record {i}") for i, r in enumerate(test)]
    labels = [bool(response_label(r)) for r in test]
    groups = Counter(zip(sources, labels))
    columns: dict[str, Counter] = {}
    for name, eval_dir in runs.items():
        predicted_labels, points = decisions(eval_dir)
        if predicted_labels != labels:
            raise DataFormatError(f"{eval_dir}: its test predictions are not {test_file}'s records in order "
                                  f"({len(predicted_labels)} vs {len(labels)} records, or other labels)")
        for point, flags in points.items():
            columns[f"{name} {point}"] = Counter((s, y) for s, y, f in zip(sources, labels, flags) if f != y)
    lines = ["| source | class | responses | " + " | ".join(columns) + " |",
             "|---|---|---:|" + "---:|" * len(columns)]
    for source, harmful in sorted(groups):
        cells = [str(errors[(source, harmful)]) for errors in columns.values()]
        lines.append(f"| {source} | {'harmful (missed)' if harmful else 'benign (stopped)'} | "
                     f"{groups[(source, harmful)]} | " + " | ".join(cells) + " |")
    totals = [str(sum(errors.values())) for errors in columns.values()]
    lines.append(f"| all | errors | {len(test)} | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def main(args: Arguments) -> str:
    runs = {}
    for pair in args.runs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--runs takes NAME=EVAL_DIR pairs, got {pair!r}")
        if name in runs:
            raise ValueError(f"--runs: the name {name!r} is given twice; each run needs its own name")
        runs[name] = folder
    table = error_table(runs, args.realmix_dir)
    if args.output_file:
        with atomic_write(args.output_file) as handle:
            handle.write(table)
    print(table, end="")
    return table


if __name__ == "__main__":
    main(*parse_dataclasses((Arguments,)))
