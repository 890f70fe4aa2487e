"""``report.md``: Table-2-style tables built from evaluation summaries (``summary.json``), one run or several.

Each evaluation entry point (``test/test_*.py``) writes ``summary.json`` and a ``report.md`` in its output folder.
This module turns summaries into markdown; it reads nothing else, so a report can be rebuilt at any time:

    python -m utils.report runs/eval/scm runs/eval/qwen-full runs/eval/qwen-partial --output runs/eval/report.md
    bash scripts/run-report.sh runs/eval/scm runs/eval/qwen-full --output report.md   # the same, in the .venv

Table columns follow the paper's Table 2 (benign P/R/F1, harmful P/R/F1, macro-F1, in %), plus, for partial
detection, the selection protocol, theta, k, the mean share of its tokens a harmful response had shown when it was
stopped, and the share of stopped harmful responses stopped within their first 10% / 30% of tokens.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from utils.io_utils import DataFormatError, atomic_write, read_json
from utils.metrics import DELAY_BIN_LABELS

SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"
TASK_LABELS = {"scm": "SCM", "qwen-full": "Qwen-arch baseline", "encoder-full": "Encoder baseline"}
METRIC_COLUMNS = (
    ("benign_precision", "Benign P"),
    ("benign_recall", "Benign R"),
    ("benign_f1", "Benign F1"),
    ("harmful_precision", "Harmful P"),
    ("harmful_recall", "Harmful R"),
    ("harmful_f1", "Harmful F1"),
    ("macro_f1", "Macro-F1"),
)
PROTOCOL_NOTE = (
    "Protocols: *paper* picks (theta, k) by macro-F1 on the reported split itself, as the public evaluation "
    "does (optimistic); *leak-free* picks them on the validation split and reports the test split; *fixed* is "
    "full detection at theta = 0.5. Ties go to the smallest k, then the smallest theta. Partial detection flags a "
    "response when the delay-k rule fires (k response tokens with score >= theta, counted cumulatively). "
    "*Seen* is the mean share of its tokens a harmful response had shown when it was stopped; *≤10%* and "
    "*≤30%* are the shares of stopped harmful responses stopped within their first 10% / 30% of tokens."
)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _row_context(summary: dict[str, Any]) -> dict[str, Any]:
    model = summary.get("model", {})
    task = model.get("task", "?")
    return {
        "model": TASK_LABELS.get(task, task),
        "checkpoint": model.get("name", "?"),
        "model_path": model.get("path"),
        "data_dir": summary.get("data", {}).get("data_dir"),
        "eval_split": summary.get("eval_split"),
    }


def _metric_fields(report: dict[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key, _ in METRIC_COLUMNS}


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


def partial_rows(summary: dict[str, Any], partial: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows for partial detection with one scorer: the paper protocol and the leak-free protocol.

    Args:
        summary: the run summary.
        partial: :func:`utils.metrics.partial_protocols` output.
    """
    context = _row_context(summary)
    rows = []
    for protocol, name in (("paper", "paper"), ("leak_free", "leak-free")):
        point = partial.get(protocol)
        if not point:
            continue
        harmful = point["report"]["delay"]["harmful"]
        rows.append({**context, "mode": "partial", "scorer": partial["scorer"], "protocol": name,
                     "theta": point["theta"], "k": point["k"], **_metric_fields(point["report"]),
                     "mean_share": harmful["mean_share"], "within_10pct": harmful["within_10pct"],
                     "within_30pct": harmful["within_30pct"]})
    return rows


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """All table rows of one run: full detection first, then each partial scorer."""
    rows = full_rows(summary, summary["full"]) if summary.get("full") else []
    for partial in (summary.get("partial") or {}).values():
        rows.extend(partial_rows(summary, partial))
    return rows


def _mode_label(row: dict[str, Any]) -> str:
    return "full" if row["mode"] == "full" else f"partial* ({row['scorer']})"


def rows_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of rows (metrics in %)."""
    header = ["Model", "Mode", "Protocol", "θ", "k", *(title for _, title in METRIC_COLUMNS), "Seen", "≤10%", "≤30%"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            f"{row['model']} ({row['checkpoint']})",
            _mode_label(row),
            row["protocol"],
            f"{row['theta']:g}",
            "–" if row.get("k") is None else str(row["k"]),
            *(_pct(row[key]) for key, _ in METRIC_COLUMNS),
            _pct(row.get("mean_share")),
            _pct(row.get("within_10pct")),
            _pct(row.get("within_30pct")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        f"share of tokens seen: mean {_pct(group['mean_share'])}%, median {_pct(group['median_share'])}%; "
        f"within 10%: {_pct(group['within_10pct'])}%, within 30%: {_pct(group['within_30pct'])}%",
        "  - histogram (" + ", ".join(f"{label}: {count}" for label, count in zip(DELAY_BIN_LABELS,
                                                                               group["histogram"])) + ")",
    ]


def _partial_section(partial: dict[str, Any], eval_split: str) -> list[str]:
    scorer = partial["scorer"]
    lines = [f"## Partial detection, `{scorer}` scorer (reported on `{eval_split}`)", "",
             "| θ | paper k | paper Macro-F1 | leak-free k | val Macro-F1 | leak-free Macro-F1 | Seen (paper) |",
             "|---|---|---|---|---|---|---|"]
    for key, protocols in partial["per_theta"].items():
        paper, free = protocols["paper"], protocols.get("leak_free")
        lines.append(
            f"| {key} | {paper['k']} | {_pct(paper['report']['macro_f1'])} | {free['k'] if free else '–'} | "
            f"{_pct(free['selection_macro_f1']) if free else '–'} | "
            f"{_pct(free['report']['macro_f1']) if free else '–'} | "
            f"{_pct(paper['report']['delay']['harmful']['mean_share'])} |"
        )
    lines.append("")
    for protocol in ("paper", "leak_free"):
        point = partial.get(protocol)
        if not point:
            continue
        delay = point["report"]["delay"]
        lines.append(f"Stopping delay, {protocol.replace('_', '-')} point (θ = {point['theta']:g}, k = {point['k']}):")
        lines.append("")
        lines += _delay_lines("harmful responses", delay["harmful"])
        lines += _delay_lines("benign responses stopped by mistake", delay["benign"])
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
        rows_table(summary.get("rows") or summary_rows(summary)),
        "",
        PROTOCOL_NOTE,
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
        handle.write(run_report(summary))
    return path


def load_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``<run_dir>/summary.json``.

    Raises:
        FileNotFoundError: no summary (the evaluation did not run or did not finish).
        DataFormatError: the summary has no table rows.
    """
    path = Path(run_dir) / SUMMARY_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a finished evaluation; run `bash scripts/run-*.sh test ...` "
            f"(or python -m test.test_*) with --output-dir {run_dir} first"
        )
    summary = read_json(path)
    if not isinstance(summary, dict) or not (summary.get("rows") or summary.get("full") or summary.get("partial")):
        raise DataFormatError(f"{path}: no results in this summary (expected 'rows', 'full' or 'partial')")
    return summary


def merged_report(run_dirs: Sequence[str | os.PathLike]) -> str:
    """One markdown table over several runs (rows de-duplicated: the Qwen partial run repeats the full rows).

    Args:
        run_dirs: evaluation output folders.

    Raises:
        FileNotFoundError / DataFormatError: as :func:`load_summary`. ValueError: no folders.
    """
    if not run_dirs:
        raise ValueError("give at least one evaluation folder")
    rows, seen, sources = [], set(), []
    for run_dir in run_dirs:
        summary = load_summary(run_dir)
        data = summary.get("data", {})
        evaluated = data.get("splits", {}).get(summary.get("eval_split"), {})
        sources.append(f"- `{run_dir}`: {summary.get('script')} on `{data.get('data_dir')}` "
                       f"(`{summary.get('eval_split')}` split, {evaluated.get('examples', '?')} examples)")
        for row in summary.get("rows") or summary_rows(summary):
            key = (row.get("model_path"), row.get("data_dir"), row["mode"], row.get("scorer"), row["protocol"],
                   row["theta"], row.get("k"))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return "\n".join(["# SCM evaluation report", "", "Macro-F1 and per-class P/R/F1 in %.", "", rows_table(rows), "",
                      PROTOCOL_NOTE, "", "Runs:", "", *sources, ""])


@dataclass
class ReportArguments:
    """Arguments of ``python -m utils.report``.

    Attributes:
        run_dirs: evaluation output folders (each with ``summary.json``).
        output: the markdown file to write; None prints to stdout.
    """

    run_dirs: list[str]
    output: str | None = None


def parse_args(argv: list[str] | None = None) -> ReportArguments:
    """Parse the command line (argparse: the folders are positional, which HfArgumentParser does not offer)."""
    parser = argparse.ArgumentParser(prog="python -m utils.report", description="Merge evaluation summaries into "
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
