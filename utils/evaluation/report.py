"""``report.md``: Table-2-style tables built from evaluation summaries (``summary.json``), one run or several.

Each evaluation entry point (``test/test_*.py``) and re-scoring (``python -m utils.evaluation.rescore``) write
``summary.json`` and a ``report.md`` in the evaluation folder. This module turns summaries into markdown; it reads
nothing else, so a report can be rebuilt at any time:

    python -m utils.evaluation.report runs/eval/scm runs/eval/qwen-full runs/eval/qwen-partial --output runs/eval/report.md
    bash scripts/run-report.sh runs/eval/scm runs/eval/qwen-full --output report.md   # the same, in the .venv

Two tables. The main one holds, per run, full detection at the fixed threshold and at the leak-free threshold, and
partial detection at the leak-free operating points (max macro-F1; earliest within the selection tolerance; best
within the false-stop budget).
The second holds the paper protocol: one row per threshold, k chosen on the reported split by harmful-class F1.
Columns follow the paper's Table 2 (benign P/R/F1, harmful P/R/F1, macro-F1, in %), plus theta, k, the number of
reported examples and, for partial detection, how early harmful responses were stopped.

Merging shows each run once: the full-detection rows of a partial run (its scripts report them too) are left out
when a full-detection run of the same checkpoint on the same data is in the merge, and identical rows are shown once.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from utils.io_utils import DataFormatError, atomic_write, read_json
from utils.metrics import DELAY_BIN_LABELS
from utils.evaluation.categories import category_report_section

SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"
TASK_LABELS = {"scm": "SCM", "qwen-full": "Qwen-arch baseline", "encoder-full": "Encoder baseline",
               "lexical": "Lexical floor (TF-IDF + LR)"}
METRIC_COLUMNS = (
    ("benign_precision", "Benign P"),
    ("benign_recall", "Benign R"),
    ("benign_f1", "Benign F1"),
    ("harmful_precision", "Harmful P"),
    ("harmful_recall", "Harmful R"),
    ("harmful_f1", "Harmful F1"),
    ("macro_f1", "Macro-F1"),
)
DELAY_COLUMNS = (
    ("mean_share", "Seen"),
    ("mean_share_all", "Seen (all)"),
    ("within_10pct", "≤10%"),
    ("within_30pct", "≤30%"),
)
# Row protocol names (stable, machine-readable) -> table labels.
PROTOCOL_LABELS = {"fixed": "fixed", "leak-free": "leak-free", "leak-free-early": "leak-free, early",
                   "leak-free-budget": "leak-free, budget", "paper": "paper (per θ)"}
# Partial-detection rows chosen on validation: (row protocol, summary key).
LEAK_FREE_PROTOCOLS = (("leak-free", "leak_free"), ("leak-free-early", "leak_free_early"),
                       ("leak-free-budget", "leak_free_budget"))


def _points(value: float) -> str:
    return f"{100 * value:g}"


def protocol_note(tolerances: Sequence[float] = (0.01,), budgets: Sequence[float] = (0.02,)) -> str:
    """How the rows were chosen and what the delay columns mean (markdown paragraph).

    Args:
        tolerances: the selection tolerances (fractions) of the runs shown.
        budgets: the false-stop budgets (shares of benign responses) of the runs shown.
    """
    values = sorted({_points(t) for t in tolerances}) or ["1"]
    tolerance = " / ".join(values) + (" macro-F1 point" if values == ["1"] else " macro-F1 points")
    budget = " / ".join(sorted({_points(b) for b in budgets}) or ["2"]) + "%"
    return (
        "How the rows were chosen. *leak-free*: θ and k chosen together on the validation split by macro-F1 (ties: "
        "smallest k, then smallest θ) and reported on the test split. *leak-free, early*: among the (θ, k) whose "
        f"validation macro-F1 is within {tolerance} of the best, the smallest k, then the smallest θ "
        "(an earlier stop for at most that loss on validation). *leak-free, budget*: among the (θ, k) that stop at "
        f"most {budget} of the benign validation responses (the false-stop budget, `--max-benign-stop-rate`), the "
        "best validation macro-F1 (ties: the earliest stop, then smallest k, then smallest θ); its *Benign R* on "
        "test is 100% minus its test benign stop rate. All three count every response token towards k, as a "
        "deployed monitor (which has no labels) and the streaming runtime do. *paper (per θ)*: what the paper's "
        "public evaluation computes: for each θ separately, the k in 1..max k with the best harmful-class F1 on the "
        "reported split itself (the first k on ties), counting only response tokens that carry a label (tokens "
        "labelled -100, such as lone spaces aligned to no word, never count towards k); it does not "
        "select θ, and since k is tuned on the reported split these rows are optimistic. Full detection: *fixed* "
        "is θ = 0.5; *leak-free* is θ chosen on validation. Partial detection flags a response when the delay-k "
        "rule fires (k counted tokens with score ≥ θ, cumulatively). *Seen*: mean share of its response tokens a "
        "stopped harmful response had shown when it was stopped (tokens up to and including the stopping one, over "
        "all its response tokens, unlabelled ones included, under every protocol); *Seen (all)*: the same mean "
        "over every harmful response, one that was never stopped counted as 100%. *≤10%* / *≤30%*: share of the "
        "stopped harmful responses stopped within their first 10% / 30% of tokens. *n*: responses in the reported "
        "split."
    )


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _row_context(summary: dict[str, Any]) -> dict[str, Any]:
    model = summary.get("model", {})
    task = model.get("task", "?")
    data = summary.get("data", {})
    eval_split = summary.get("eval_split")
    return {
        "model": TASK_LABELS.get(task, task),
        "checkpoint": model.get("name", "?"),
        "model_path": model.get("path"),
        "data_dir": data.get("data_dir"),
        "eval_split": eval_split,
        "n": (data.get("splits", {}).get(eval_split) or {}).get("examples"),
        "script": summary.get("script"),
    }


def _metric_fields(report: dict[str, Any]) -> dict[str, Any]:
    # benign_stop_rate: benign responses flagged (stopped) / benign responses, the false-stop budget's measure.
    return {**{key: report[key] for key, _ in METRIC_COLUMNS}, "benign_stop_rate": report["far"]}


def full_rows(summary: dict[str, Any], full: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows for full detection: the fixed threshold and, when validation was scored, the leak-free one.

    Args:
        summary: the run summary (for the model and data context).
        full: :func:`utils.metrics.full_protocols` output.
    """
    context = _row_context(summary)
    rows = [{**context, "mode": "full", "scorer": None, "protocol": "fixed", "theta": full["fixed"]["theta"],
             "k": None, **_metric_fields(full["fixed"]["report"])}]
    if full.get("leak_free"):
        rows.append({**context, "mode": "full", "scorer": None, "protocol": "leak-free",
                     "theta": full["leak_free"]["theta"], "k": None, **_metric_fields(full["leak_free"]["report"])})
    return rows


def _partial_row(context: dict[str, Any], scorer: str, protocol: str, point: dict[str, Any],
                 tolerance: float | None) -> dict[str, Any]:
    harmful = point["report"]["delay"]["harmful"]
    row = {**context, "mode": "partial", "scorer": scorer, "protocol": protocol, "theta": point["theta"],
           "k": point["k"], "counting": point["counting"], "selected_on": point["selected_on"],
           "selection_metric": point["selection_metric"], "selection_score": point["selection_score"],
           "tolerance": tolerance, **_metric_fields(point["report"]),
           **{key: harmful[key] for key, _ in DELAY_COLUMNS}}
    if "max_benign_stop_rate" in point:
        row["max_benign_stop_rate"] = point["max_benign_stop_rate"]
    return row


def partial_rows(summary: dict[str, Any], partial: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows for partial detection with one scorer: the leak-free points (when validation was scored and the
    rule chose one), then the paper protocol's point for each threshold.

    Args:
        summary: the run summary.
        partial: :func:`utils.metrics.partial_protocols` output.
    """
    context = _row_context(summary)
    scorer, tolerance = partial["scorer"], partial.get("selection_tolerance")
    rows = []
    for protocol, key in LEAK_FREE_PROTOCOLS:
        if partial.get(key):
            rows.append(_partial_row(context, scorer, protocol, partial[key],
                                     tolerance if protocol == "leak-free-early" else None))
    for point in partial["paper"].values():
        rows.append(_partial_row(context, scorer, "paper", point, None))
    return rows


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """All table rows of one run: full detection first, then each partial scorer."""
    rows = full_rows(summary, summary["full"]) if summary.get("full") else []
    for partial in (summary.get("partial") or {}).values():
        rows.extend(partial_rows(summary, partial))
    return rows


def _mode_label(row: dict[str, Any]) -> str:
    return "full" if row["mode"] == "full" else f"partial* ({row['scorer']})"


def _protocol_label(row: dict[str, Any]) -> str:
    label = PROTOCOL_LABELS.get(row["protocol"], row["protocol"])
    if row["protocol"] == "leak-free-early" and row.get("tolerance") is not None:
        label += f" (≤{_points(row['tolerance'])} pt)"
    if row["protocol"] == "leak-free-budget" and row.get("max_benign_stop_rate") is not None:
        label += f" (≤{_points(row['max_benign_stop_rate'])}% benign stops)"
    return label


def rows_table(rows: Sequence[dict[str, Any]], with_protocol: bool = True) -> str:
    """Markdown table of rows (metrics in %).

    Args:
        rows: table rows (:func:`summary_rows`).
        with_protocol: include the protocol column (the paper table leaves it out: it has one protocol).
    """
    header = ["Model", "Mode", *(["Protocol"] if with_protocol else []), "θ", "k", "n",
              *(title for _, title in METRIC_COLUMNS), *(title for _, title in DELAY_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            f"{row['model']} ({row['checkpoint']})",
            _mode_label(row),
            *([_protocol_label(row)] if with_protocol else []),
            f"{row['theta']:g}",
            "–" if row.get("k") is None else str(row["k"]),
            "–" if row.get("n") is None else str(row["n"]),
            *(_pct(row[key]) for key, _ in METRIC_COLUMNS),
            *(_pct(row.get(key)) for key, _ in DELAY_COLUMNS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tables(rows: Sequence[dict[str, Any]], level: str) -> list[str]:
    main = [row for row in rows if row["protocol"] != "paper"]
    paper = [row for row in rows if row["protocol"] == "paper"]
    lines = [rows_table(main), ""]
    if paper:
        lines += [f"{level} Paper protocol: one row per threshold (k chosen on the reported split)", "",
                  rows_table(paper, with_protocol=False), ""]
    return lines


def _splits_table(summary: dict[str, Any]) -> str:
    lines = ["| split | examples | harmful | response tokens | truncated |", "|---|---|---|---|---|"]
    for split, info in summary.get("data", {}).get("splits", {}).items():
        lines.append(f"| {split} | {info['examples']} | {info['harmful']} | {info.get('response_tokens', '–')} | "
                     f"{info.get('truncated', 0)} |")
    return "\n".join(lines)


def _full_section(full: dict[str, Any]) -> list[str]:
    lines = ["## Full detection by threshold", ""]
    for split, by_theta in full["by_threshold"].items():
        lines += [f"Split `{split}`:", "", "| θ | Macro-F1 | Harmful P | Harmful R | Harmful F1 | FAR | MAR | Acc |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, rep in by_theta.items():
            lines.append(f"| {key} | {_pct(rep['macro_f1'])} | {_pct(rep['harmful_precision'])} | "
                         f"{_pct(rep['harmful_recall'])} | {_pct(rep['harmful_f1'])} | {_pct(rep['far'])} | "
                         f"{_pct(rep['mar'])} | {_pct(rep['accuracy'])} |")
        lines.append("")
    return lines


def _delay_lines(title: str, group: dict[str, Any]) -> list[str]:
    return [
        f"- {title}: {group['stopped']} of {group['responses']} stopped ({group['not_stopped']} not stopped); "
        f"share of tokens seen: mean {_pct(group['mean_share'])}%, median {_pct(group['median_share'])}% (stopped "
        f"ones), mean {_pct(group.get('mean_share_all'))}% (all, a missed one as 100%); "
        f"within 10%: {_pct(group['within_10pct'])}%, within 30%: {_pct(group['within_30pct'])}%",
        "  - histogram (" + ", ".join(f"{label}: {count}" for label, count in zip(DELAY_BIN_LABELS,
                                                                               group["histogram"])) + ")",
    ]


def _operating_points_lines(partial: dict[str, Any]) -> list[str]:
    """The leak-free points side by side, with what a deployer weighs: harmful recall against the benign stop rate
    (share of benign responses stopped), on the selection split and the reported split."""
    select, report = partial.get("select_split"), partial["eval_split"]
    if not select:
        return []
    budget = partial.get("max_benign_stop_rate")
    lines = [f"Operating points (chosen on `{select}`; *Benign stops*: benign responses stopped / benign responses; "
             f"false-stop budget {_points(budget) if budget is not None else '–'}%):", "",
             f"| rule | θ | k | {select} Macro-F1 | {select} Harmful R | {select} Benign stops | {select} Seen (all) | "
             f"{report} Macro-F1 | {report} Harmful R | {report} Benign stops | {report} Seen (all) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (protocol, key), label in zip(LEAK_FREE_PROTOCOLS, ("leak-free", "leak-free, early", "leak-free, budget")):
        point = partial.get(key)
        if not point:
            reason = partial.get(f"{key}_reason")
            lines.append(f"| {label} | – | – | " + " | ".join(["–"] * 8) + " |" if not reason else
                         f"| {label} | – | – | none: {reason} |" + " |" * 7)
            continue
        chosen = point.get("selection_report") or {}
        test = point["report"]
        lines.append(f"| {label} | {point['theta']:g} | {point['k']} | {_pct(chosen.get('macro_f1'))} | "
                     f"{_pct(chosen.get('harmful_recall'))} | {_pct(chosen.get('benign_stop_rate'))} | "
                     f"{_pct(chosen.get('mean_share_all'))} | {_pct(test['macro_f1'])} | "
                     f"{_pct(test['harmful_recall'])} | "
                     f"{_pct(test['far'])} | {_pct(test['delay']['harmful']['mean_share_all'])} |")
    return lines + [""]


def _partial_section(partial: dict[str, Any], eval_split: str) -> list[str]:
    scorer = partial["scorer"]
    free_by_theta = partial.get("leak_free_per_theta") or {}
    lines = [f"## Partial detection, `{scorer}` scorer (reported on `{eval_split}`)", "",
             "Per threshold: the paper protocol's k (best harmful F1 on the reported split, labelled tokens only) "
             "and the leak-free k for that threshold (best validation macro-F1, every token).", "",
             "| θ | paper k | paper Harmful F1 | paper Macro-F1 | paper Seen | leak-free k | val Macro-F1 | "
             "leak-free Macro-F1 | leak-free Seen |", "|---|---|---|---|---|---|---|---|---|"]
    for key, paper in partial["paper"].items():
        report = paper["report"]
        cells = [key, str(paper["k"]), _pct(report["harmful_f1"]), _pct(report["macro_f1"]),
                 _pct(report["delay"]["harmful"]["mean_share"])]
        free = free_by_theta.get(key)
        if free:
            cells += [str(free["k"]), _pct(free["selection_score"]), _pct(free["report"]["macro_f1"]),
                      _pct(free["report"]["delay"]["harmful"]["mean_share"])]
        else:
            cells += ["–"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _operating_points_lines(partial)
    for protocol, key in (("leak-free", "leak_free"), ("leak-free, early", "leak_free_early"),
                          ("leak-free, budget", "leak_free_budget")):
        point = partial.get(key)
        if not point:
            continue
        delay = point["report"]["delay"]
        lines.append(f"Stopping delay, {protocol} point (θ = {point['theta']:g}, k = {point['k']}; validation "
                     f"macro-F1 {_pct(point['selection_score'])}):")
        lines.append("")
        lines += _delay_lines("harmful responses", delay["harmful"])
        lines += _delay_lines("benign responses stopped by mistake", delay["benign"])
        lines.append("")
    frontier = (partial.get("frontier") or {}).get(eval_split) or []
    if frontier:
        lines += [f"Frontier on `{eval_split}` (the (θ, k) of the grid that no other beats on both macro-F1 and Seen "
                  f"(all), every token counted):", "",
                  "| Seen (all) | Macro-F1 | θ | k |", "|---|---|---|---|"]
        lines += [f"| {_pct(p['mean_share_all'])} | {_pct(p['macro_f1'])} | {p['theta']:g} | {p['k']} |"
                  for p in frontier]
        lines.append("")
    return lines


def _token_section(token_level: dict[str, Any]) -> list[str]:
    lines = ["## Token-level detection (labelled response tokens)", "",
             "| scorer | split | θ | P | R | F1 | Macro-F1 | labelled tokens |", "|---|---|---|---|---|---|---|---|"]
    for scorer, by_split in token_level.items():
        for split, by_theta in by_split.items():
            for key, rep in by_theta.items():
                lines.append(f"| {scorer} | {split} | {key} | {_pct(rep['harmful_precision'])} | "
                             f"{_pct(rep['harmful_recall'])} | {_pct(rep['harmful_f1'])} | {_pct(rep['macro_f1'])} | "
                             f"{rep['n']} |")
    return lines + [""]


def run_report(summary: dict[str, Any]) -> str:
    """The full ``report.md`` of one evaluation run.

    Args:
        summary: the run's ``summary.json`` content.

    Returns:
        Markdown text.
    """
    model, runtime = summary.get("model", {}), summary.get("runtime", {})
    lines = [
        f"# Evaluation: {TASK_LABELS.get(model.get('task'), model.get('task'))} `{model.get('name')}`",
        "",
        f"- checkpoint: `{model.get('path')}` (task `{model.get('task')}`, backbone `{model.get('backbone_type')}`)",
        f"- data: `{summary.get('data', {}).get('data_dir')}`, max length {summary.get('data', {}).get('max_length')}",
        f"- script: `{summary.get('script')}`; device {runtime.get('device')}, dtype {runtime.get('dtype')}, "
        f"batch size {runtime.get('batch_size')}; inference seconds: "
        + ", ".join(f"{split} {sec}" for split, sec in (runtime.get("inference_seconds") or {}).items()),
        "",
        _splits_table(summary),
        "",
        f"## Response-level results (`{summary.get('eval_split')}`, %)",
        "",
        *_tables(summary.get("rows") or summary_rows(summary), "###"),
        protocol_note([summary.get("selection_tolerance", 0.01)], [summary.get("max_benign_stop_rate", 0.02)]),
        "",
    ]
    if summary.get("full"):
        lines += _full_section(summary["full"])
    for partial in (summary.get("partial") or {}).values():
        lines += _partial_section(partial, summary.get("eval_split"))
    if summary.get("token_level"):
        lines += _token_section(summary["token_level"])
    if summary.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in summary["plots"]] + [""]
    return "\n".join(lines)


def write_run_report(output_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Atomically write ``<output_dir>/report.md`` for one run; returns its path."""
    path = Path(output_dir) / REPORT_NAME
    with atomic_write(path) as handle:
        handle.write(run_report(summary) + category_report_section(summary))
    return path


def load_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``<run_dir>/summary.json``.

    Raises:
        FileNotFoundError: no summary (the evaluation did not run or did not finish).
        DataFormatError: the summary has no results, or was written by an older version (re-score it).
    """
    path = Path(run_dir) / SUMMARY_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a finished evaluation; run `bash scripts/run-*.sh test ...` "
            f"(or python -m test.test_*) with --output-dir {run_dir} first"
        )
    summary = read_json(path)
    if not isinstance(summary, dict) or not (summary.get("full") or summary.get("partial")):
        raise DataFormatError(f"{path}: no results in this summary (expected 'full' or 'partial')")
    if "protocols" not in summary:
        raise DataFormatError(f"{path} was written by an older version of the metrics (no 'protocols'); refresh it "
                              f"from its predictions with `python -m utils.evaluation.rescore {run_dir}`")
    return summary


def _run_identity(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """The checkpoint and data a run evaluated, for "is this the same run" tests across folders."""
    def norm(path: str | None) -> str | None:
        return os.path.normpath(path) if path else None
    return norm(summary.get("model", {}).get("path")), norm(summary.get("data", {}).get("data_dir"))


def _is_full_run(summary: dict[str, Any]) -> bool:
    return bool(summary.get("full")) and not summary.get("partial")


def merged_rows(summaries: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The rows of several runs, each run shown once.

    A partial run also reports full detection (same checkpoint, whole responses); its full rows are left out when a
    full-detection run of the same checkpoint on the same data is among ``summaries`` (that run's rows stand for
    it, on its possibly larger split). Rows identical in run identity, mode, scorer, protocol, theta and k are shown
    once.

    Args:
        summaries: ``(run_dir, summary)`` pairs, in report order.

    Returns:
        The rows, and ``{run_dir: run_dir of the full run whose full rows stand for it}``.
    """
    full_runs: dict[tuple, str] = {}
    for run_dir, summary in summaries:
        if _is_full_run(summary):
            full_runs.setdefault(_run_identity(summary), run_dir)
    rows, seen, replaced = [], set(), {}
    for run_dir, summary in summaries:
        identity = _run_identity(summary)
        owner = full_runs.get(identity)
        drop_full = bool(summary.get("partial")) and owner is not None and owner != run_dir
        if drop_full and summary.get("full"):
            replaced[run_dir] = owner
        for row in summary_rows(summary):
            if drop_full and row["mode"] == "full":
                continue
            key = (*identity, row["mode"], row.get("scorer"), row["protocol"], row["theta"], row.get("k"))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows, replaced


def merged_report(run_dirs: Sequence[str | os.PathLike]) -> str:
    """One report over several runs: the main table, the paper protocol's table, the protocol note, the runs.

    Args:
        run_dirs: evaluation output folders, as the user gave them (the report names them so).

    Raises:
        FileNotFoundError / DataFormatError: as :func:`load_summary`. ValueError: no folders.
    """
    if not run_dirs:
        raise ValueError("give at least one evaluation folder")
    summaries = [(str(run_dir), load_summary(run_dir)) for run_dir in run_dirs]
    rows, replaced = merged_rows(summaries)
    sources = []
    for run_dir, summary in summaries:
        data = summary.get("data", {})
        evaluated = data.get("splits", {}).get(summary.get("eval_split"), {})
        line = (f"- `{run_dir}`: {summary.get('script')} on `{data.get('data_dir')}` "
                f"(`{summary.get('eval_split')}` split, {evaluated.get('examples', '?')} examples)")
        if run_dir in replaced:
            line += f"; its full-detection rows are those of `{replaced[run_dir]}` (same checkpoint and data)"
        sources.append(line)
    tolerances = [s.get("selection_tolerance", 0.01) for _, s in summaries if s.get("partial")]
    budgets = [s.get("max_benign_stop_rate", 0.02) for _, s in summaries if s.get("partial")]
    return "\n".join(["# SCM evaluation report", "", "Macro-F1, per-class P/R/F1 and delays in %.", "",
                      *_tables(rows, "##"), protocol_note(tolerances or [0.01], budgets or [0.02]), "", "Runs:", "",
                      *sources, ""])


@dataclass
class ReportArguments:
    """Arguments of ``python -m utils.evaluation.report``.

    Attributes:
        run_dirs: evaluation output folders (each with ``summary.json``).
        output: the markdown file to write; None prints to stdout.
    """

    run_dirs: list[str]
    output: str | None = None


def parse_args(argv: list[str] | None = None) -> ReportArguments:
    """Parse the command line (argparse: the folders are positional, which HfArgumentParser does not offer)."""
    parser = argparse.ArgumentParser(prog="python -m utils.evaluation.report", description="Merge evaluation summaries into "
                                     "one Table-2-style markdown table.")
    parser.add_argument("run_dirs", nargs="+", help="evaluation output folders (each holds summary.json)")
    parser.add_argument("--output", default=None, help="markdown file to write (default: print)")
    return ReportArguments(**vars(parser.parse_args(argv)))


def main(args: ReportArguments) -> str:
    """Build the merged report, write it to ``args.output`` (atomically) or print it; returns the text."""
    text = merged_report(args.run_dirs)
    if args.output:
        with atomic_write(args.output) as handle:
            handle.write(text)
    else:
        print(text)
    return text


if __name__ == "__main__":
    main(parse_args())
