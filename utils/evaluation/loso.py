"""Leave-one-source-out on a FineHarm-format folder whose records carry realmix's ``meta`` (``source`` plus
``attack`` for JailbreakBench or ``model`` for XSTest): does a monitor judge harm, or the style of the sources it
was trained on?

``build`` writes one FineHarm-format folder per held-out source:

- ``train_new.json`` / ``valid_new.json``: the original train / valid records of every *other* source (the
  in-distribution validation split, on which the leak-free operating point is chosen);
- ``test_new.json``: **every** record of the held-out source, from all three original splits. Nothing of that
  source is seen in training or selection either way, and the test split alone is too small to measure (realmix
  test holds 1 benign DSN response and no harmful XSTest-gpt4 one). Caveat: the *prompts* recur across sources
  (XSTest's 450 prompts are answered by each of its four models; JailbreakBench's behaviours by each attack), so a
  held-out XSTest model means a new LLM answering known prompts, and a held-out attack new jailbreak outputs for
  known behaviours;
- ``sources.json``: per source and class, the counts in each split, and where each test record came from.

Sources with (almost) one class are kept: a source with only benign responses still measures false alarms on an
unseen model's style. The table reports a class's metric only when the held-out test holds at least
``--min-class`` (default 10) responses of that class: harmful recall and mean share seen need that many harmful
ones, FAR that many benign ones, macro-F1 both; otherwise it prints "–" beside the counts. On realmix that leaves
XSTest gpt4 (449 benign / 1 harmful), llama2new and llama2orig (450 / 0) with FAR only.

``table`` reads the evaluation summaries ``<runs-dir>/<source>/<run>/summary.json`` and writes ``loso.md`` and
``loso.json``: per held-out source and run, the leak-free operating point (theta, and k for partial detection,
chosen on the in-distribution validation split) and its macro-F1, harmful recall, FAR and mean share of tokens seen
by the stop on the held-out test.

Commands (``bash scripts/run-loso.sh`` chains them)::

    python -m utils.evaluation.loso build --input-dir ../shared/data/realmix --output-dir .cache/loso/lexical/folders
    python -m utils.evaluation.loso list --folders .cache/loso/lexical/folders
    python -m utils.evaluation.loso table --runs-dir runs/loso/lexical/eval --output-dir results/loso
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from utils.cli import parse_command
from utils.evaluation.outputs import portable_path
from utils.data.fineharm import SPLIT_FILES, SPLITS, load_fineharm, response_label
from utils.io_utils import DataFormatError, atomic_write, read_json, staged_output_dir, write_json

SOURCES_NAME = "sources.json"
MIN_CLASS = 10
ALL_RECORDS = "all records of the held-out source, from every original split"
RULE_NAMES = {"leak_free": "best", "leak_free_early": "early"}
TABLE_NAMES = ("loso.md", "loso.json")


def source_key(record: dict[str, Any], where: str, level: str = "model") -> str:
    """The held-out unit a record belongs to: at ``level`` "model", ``jbb-GCG``, ``xstest-gpt4`` (the record's
    ``meta.source`` and its ``attack`` or ``model``); at ``level`` "source", ``jbb``, ``xstest`` (``meta.source``).

    Raises:
        DataFormatError: a record without that metadata (naming ``where``).
    """
    meta = record.get("meta")
    if level == "source":
        if not isinstance(meta, dict) or not meta.get("source"):
            raise DataFormatError(f"{where}: field 'meta' needs 'source' (as realmix and realmix2 records have) to "
                                  f"hold a source out")
        name = str(meta["source"])
    else:
        if not isinstance(meta, dict) or not meta.get("source") or not (meta.get("attack") or meta.get("model")):
            raise DataFormatError(f"{where}: field 'meta' needs 'source' and 'attack' or 'model' (as realmix records "
                                  f"have) to hold a source out at --level model; --level source needs 'source' only")
        name = f"{meta['source']}-{meta.get('attack') or meta.get('model')}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def source_counts(data: dict[str, list[dict[str, Any]]], level: str = "model") -> dict[str, dict[str, dict[str, int]]]:
    """``{source: {split: {"benign": n, "harmful": n}, "all": {...}}}``, sources sorted by name."""
    counts: dict[str, Counter] = {}
    for split, records in data.items():
        for index, record in enumerate(records):
            key = source_key(record, f"{SPLIT_FILES[split]}, record {index}", level)
            counts.setdefault(key, Counter())[split, response_label(record)] += 1
    result = {}
    for key in sorted(counts):
        per_split = {split: {"benign": counts[key][split, 0], "harmful": counts[key][split, 1]} for split in data}
        per_split["all"] = {cls: sum(per_split[s][cls] for s in data) for cls in ("benign", "harmful")}
        result[key] = per_split
    return result


def held_out_split(data: dict[str, list[dict[str, Any]]], held_out: str, level: str = "model",
                   test_splits: Sequence[str] = SPLITS) -> tuple[dict[str, list[dict]], list[dict]]:
    """The FineHarm splits for one held-out source, and the provenance of its test records.

    The held-out source's records of ``test_splits`` form the test split; its records of the other splits are used
    nowhere (neither in training nor in selection).

    Returns:
        ``({"train": [...], "val": [...], "test": [...]}, [{"split", "index"} per test record])``.
    """
    folds: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    provenance = []
    for split, records in data.items():
        for index, record in enumerate(records):
            if source_key(record, f"{SPLIT_FILES[split]}, record {index}", level) == held_out:
                if split in test_splits:
                    folds["test"].append(record)
                    provenance.append({"split": split, "index": index})
            elif split in ("train", "val"):
                folds[split].append(record)
    return folds, provenance


@dataclass
class BuildArguments:
    """Flags of ``python -m utils.evaluation.loso build``."""

    input_dir: str = field(metadata={"help": "FineHarm-format folder whose records carry meta.source and "
                                             "meta.attack / meta.model (realmix)."})
    output_dir: str = field(metadata={"help": "Folder that receives one FineHarm-format folder per held-out source "
                                              "(replaced whole)."})
    sources: str | None = field(default=None, metadata={"help": "Comma-separated sources to hold out (default: "
                                                                "all), e.g. jbb-GCG,xstest-gpt4."})
    level: str = field(default="model", metadata={
        "help": "What one held-out source is: model (meta.source with its attack or model, e.g. jbb-GCG: realmix's "
                "11 units) or source (meta.source alone, e.g. jbb: realmix2's four sources).",
        "choices": ["model", "source"]})
    test_splits: str = field(default=",".join(SPLITS), metadata={
        "help": "Which original splits of the held-out source make its test split (comma-separated of "
                f"{','.join(SPLITS)}; default all: every record of it). 'test' alone keeps a big source's "
                "evaluation small; its other records are then used nowhere."})


def build(args: BuildArguments) -> dict[str, Any]:
    """Write the per-held-out-source folders; returns the manifest (also ``<output_dir>/sources.json``).

    Raises:
        FileNotFoundError / DataFormatError: a missing or malformed input. ValueError: an unknown source name.
    """
    test_splits = [s.strip() for s in args.test_splits.split(",") if s.strip()]
    if not test_splits or any(s not in SPLITS for s in test_splits):
        raise ValueError(f"--test-splits: expected a comma-separated subset of {','.join(SPLITS)}, got "
                         f"'{args.test_splits}'")
    data = load_fineharm(args.input_dir, SPLITS)
    counts = source_counts(data, args.level)
    chosen = list(counts) if not args.sources else [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in counts]
    if unknown:
        raise ValueError(f"--sources: unknown source(s) {', '.join(unknown)}; {args.input_dir} holds "
                         f"{', '.join(counts)}")
    test_text = (ALL_RECORDS if set(test_splits) == set(SPLITS)
                 else f"the held-out source's records of the original {'/'.join(test_splits)} split(s); its other "
                      f"records are used nowhere")
    manifest: dict[str, Any] = {"format_version": 1, "input_dir": portable_path(args.input_dir), "min_class": MIN_CLASS,
                                "level": args.level, "test_splits": test_splits, "test": test_text,
                                "counts": counts, "held_out": {}}
    # Any source's folder may be replaced (a later run over other sources rebuilds the folder for those only; the
    # folders are derived data, the models and evaluations live elsewhere); foreign files still stop it.
    with staged_output_dir(args.output_dir, [*counts, SOURCES_NAME]) as tmp:
        for held_out in chosen:
            folds, provenance = held_out_split(data, held_out, args.level, test_splits)
            folder = tmp / held_out
            folder.mkdir()
            for split, records in folds.items():
                write_json(folder / SPLIT_FILES[split], records)
            info = {"held_out": held_out, "sizes": {s: len(r) for s, r in folds.items()},
                    "test_harmful": sum(response_label(r) for r in folds["test"]), "test_provenance": provenance}
            write_json(folder / SOURCES_NAME, info)
            manifest["held_out"][held_out] = {k: v for k, v in info.items() if k != "test_provenance"}
        write_json(tmp / SOURCES_NAME, manifest)
    for name, per_split in counts.items():
        print(f"[loso] {name}: {per_split['all']['benign']} benign / {per_split['all']['harmful']} harmful",
              file=sys.stderr)
    return manifest


@dataclass
class ListArguments:
    """Flags of ``python -m utils.evaluation.loso list``."""

    folders: str = field(metadata={"help": "The --output-dir of `build`."})


def list_sources(args: ListArguments) -> list[str]:
    """Print the held-out sources of a built folder, one per line (for the shell driver's loop)."""
    path = Path(args.folders) / SOURCES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m utils.evaluation.loso build` first")
    names = list(read_json(path)["held_out"])
    print("\n".join(names))
    return names


# ----------------------------------------------------------------------------------------------------------- table


LEAK_FREE_RULES = ("leak_free", "leak_free_early")


def leak_free_points(summary: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The leak-free operating points of one evaluation summary: full detection, then each partial scorer under each
    leak-free rule it has (``leak_free``: best validation macro-F1; ``leak_free_early``: the earliest within the
    selection tolerance of it, see ``utils/metrics.py``).

    Yields:
        ``{"mode", "scorer", "rule", "theta", "k", "report"}`` (``k`` None for full detection).
    """
    full = (summary.get("full") or {}).get("leak_free")
    if full:
        yield {"mode": "full", "scorer": None, "rule": "leak_free", "theta": full["theta"], "k": None,
               "report": full["report"]}
    for scorer, partial in (summary.get("partial") or {}).items():
        for rule in LEAK_FREE_RULES:
            point = partial.get(rule)
            if point:
                yield {"mode": "partial", "scorer": scorer, "rule": rule, "theta": point["theta"], "k": point["k"],
                       "report": point["report"]}


def table_row(source: str, run: str, summary: dict[str, Any], point: dict[str, Any], min_class: int
              ) -> dict[str, Any]:
    """One table row; a metric is None when its class has fewer than ``min_class`` held-out responses."""
    report = point["report"]
    n_harmful, n_benign = report["n_harmful"], report["n_benign"]
    enough_harmful, enough_benign = n_harmful >= min_class, n_benign >= min_class
    delay = (report.get("delay") or {}).get("harmful") or {}
    return {
        "held_out": source, "run": run, "task": summary.get("model", {}).get("task"), "mode": point["mode"],
        "scorer": point["scorer"], "rule": point["rule"], "theta": point["theta"], "k": point["k"],
        "selected_on": summary.get("select_split"), "n_benign": n_benign, "n_harmful": n_harmful,
        "macro_f1": report["macro_f1"] if enough_harmful and enough_benign else None,
        "harmful_recall": report["harmful_recall"] if enough_harmful else None,
        "far": report["far"] if enough_benign else None,
        "mean_share": delay.get("mean_share") if enough_harmful and point["mode"] == "partial" else None,
    }


def collect_rows(runs_dir: str | Path, min_class: int = MIN_CLASS) -> list[dict[str, Any]]:
    """Rows for every ``<runs_dir>/<source>/<run>/summary.json``, sorted by source then run.

    Raises:
        FileNotFoundError: no summary under ``runs_dir``. DataFormatError: a summary without a leak-free point
            (evaluated without the validation split).
    """
    paths = sorted(Path(runs_dir).glob("*/*/summary.json"))
    if not paths:
        raise FileNotFoundError(f"no <source>/<run>/summary.json under {runs_dir}: run scripts/run-loso.sh first")
    rows = []
    for path in paths:
        summary = read_json(path)
        points = list(leak_free_points(summary))
        if not points:
            raise DataFormatError(f"{path}: no leak-free operating point; evaluate with --splits val,test")
        rows.extend(table_row(path.parent.parent.name, path.parent.name, summary, p, min_class) for p in points)
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def markdown_table(rows: Sequence[dict[str, Any]], min_class: int, tested_on: str = ALL_RECORDS) -> str:
    """The table, then one line per (run, mode, scorer): the mean over held-out sources where a metric exists."""
    header = ["Held-out source", "Benign", "Harmful", "Run", "Mode", "Rule", "θ", "k", "Macro-F1", "Harmful R",
              "FAR", "Seen"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mode = "full" if row["mode"] == "full" else f"partial* ({row['scorer']})"
        lines.append("| " + " | ".join([
            row["held_out"], str(row["n_benign"]), str(row["n_harmful"]), row["run"], mode, RULE_NAMES[row["rule"]],
            f"{row['theta']:g}",
            "–" if row["k"] is None else str(row["k"]), _pct(row["macro_f1"]), _pct(row["harmful_recall"]),
            _pct(row["far"]), _pct(row["mean_share"])]) + " |")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["mode"], row["scorer"], row["rule"]), []).append(row)
    lines += ["", "Mean over held-out sources (each metric over the sources where it is defined):", "",
              "| Run | Mode | Rule | Sources | Macro-F1 | Harmful R | FAR | Seen |", "|" + "---|" * 8]
    for (run, mode, scorer, rule), group in sorted(groups.items(), key=lambda item: item[0][0]):
        label = "full" if mode == "full" else f"partial* ({scorer})"
        lines.append(f"| {run} | {label} | {RULE_NAMES[rule]} | {len(group)} | " + " | ".join(
            _pct(_mean([r[m] for r in group])) for m in ("macro_f1", "harmful_recall", "far", "mean_share")) + " |")
    note = (f"Leak-free operating points, chosen on the in-distribution validation split (the other sources' "
            f"validation records) and reported on {tested_on}: *best* = the theta (and k "
            f"for partial detection) with the best validation macro-F1; *early* = the smallest k, then theta, whose "
            f"validation macro-F1 is within the selection tolerance of the best. Metrics in %. A metric is shown only "
            f"when the held-out source has at least {min_class} responses of the class it needs (harmful recall and "
            f"Seen: harmful; FAR: benign; macro-F1: both). *Seen*: mean share of its tokens a stopped harmful "
            f"response had shown.")
    return "\n".join(["# Leave-one-source-out", "", *lines, "", note, ""])


@dataclass
class TableArguments:
    """Flags of ``python -m utils.evaluation.loso table``."""

    runs_dir: str = field(metadata={"help": "Folder holding <source>/<run>/summary.json (evaluation outputs)."})
    output_dir: str = field(metadata={"help": "Where loso.md and loso.json go."})
    min_class: int = field(default=MIN_CLASS, metadata={"help": "Fewest responses of a class for its metrics."})
    folders: str | None = field(default=None, metadata={"help": "The --output-dir of `build` (its sources.json says "
                                                                "what the held-out test held; default: every record)."})


def table(args: TableArguments) -> str:
    """Write ``loso.md`` and ``loso.json``; returns the markdown."""
    if args.min_class < 1:
        raise ValueError(f"--min-class must be >= 1, got {args.min_class}")
    rows = collect_rows(args.runs_dir, args.min_class)
    manifest = Path(args.folders) / SOURCES_NAME if args.folders else None
    tested_on = read_json(manifest)["test"] if manifest and manifest.is_file() else ALL_RECORDS
    text = markdown_table(rows, args.min_class, tested_on)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with atomic_write(output / "loso.md") as handle:
        handle.write(text)
    write_json(output / "loso.json", {"format_version": 1, "runs_dir": portable_path(args.runs_dir),
                                      "min_class": args.min_class, "rows": rows})
    print(text)
    return text


COMMANDS = {"build": (BuildArguments, build), "list": (ListArguments, list_sources), "table": (TableArguments, table)}


def parse_args(argv: list[str] | None = None) -> tuple[str, Any]:
    """``COMMAND FLAGS`` -> ``(COMMAND, its arguments)``; an unknown command or flag exits with status 2."""
    return parse_command({name: arguments for name, (arguments, _) in COMMANDS.items()}, argv, "python -m utils.evaluation.loso")


def main(command: str, args: Any) -> Any:
    """Run one command (:func:`build`, :func:`list_sources` or :func:`table`) and return its result."""
    return COMMANDS[command][1](args)


if __name__ == "__main__":
    main(*parse_args())
