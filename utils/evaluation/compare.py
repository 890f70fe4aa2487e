"""One table over several evaluations of the same kind of model: the arms of a recipe ablation read on the split that
chose the operating points (validation), or the seeds of one recipe on test with their mean and spread.

Each ``--run LABEL=FOLDER`` names an evaluation folder (the ``--output-dir`` of ``run-scm.sh test`` or another partial
evaluation driver). A row gives, for one scorer, the leak-free point (theta, k, macro-F1, harmful recall, benign stops,
mean share seen by a stopped harmful response and by every harmful one, a miss counted as whole) and the point of the
false-stop budget (harmful recall, benign stops), on ``--split`` val (the numbers the rules were chosen by) or test
(their report), beside the training that produced the model (responses, wall time, best validation loss), read from
the ``training_summary.json`` of the model folder the evaluation records, or the copy run-realmix.sh keeps beside it.

With ``--mean``, a last row gives the mean and the sample standard deviation over the runs (what "3 seeds" means in
results/realmix2/README.md)::

    python -m utils.evaluation.compare --split val --output results/realmix2/ablation.md \\
        --run "2,000 responses=results/realmix2/ablation/small/scm" --run "6,000 responses=results/realmix2/scm"
    python -m utils.evaluation.compare --split test --mean --output results/realmix2/seeds.md \\
        --run "seed 42=results/realmix2/scm" --run "seed 43=results/realmix2/seeds/seed43/scm"
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from utils.io_utils import REPO_ROOT, DataFormatError, read_json, write_text

METRICS = ("macro_f1", "harmful_recall", "benign_stops", "seen_stopped", "seen_all", "budget_recall",
           "budget_benign_stops")
HEADERS = {"macro_f1": "macro-F1", "harmful_recall": "harmful recall", "benign_stops": "benign stops",
           "seen_stopped": "seen (stopped)", "seen_all": "seen (all)", "budget_recall": "budget: harmful recall",
           "budget_benign_stops": "budget: benign stops"}


def point_numbers(point: dict[str, Any], split: str) -> dict[str, float]:
    """Macro-F1, harmful recall, benign stop rate and mean shares seen (fractions) of one chosen operating point on
    ``split``: its ``selection_report`` (the split it was chosen on) or its ``report`` (the evaluated split)."""
    if split == point.get("selected_on"):
        chosen = point["selection_report"]
        return {"macro_f1": chosen["macro_f1"], "harmful_recall": chosen["harmful_recall"],
                "benign_stops": chosen["benign_stop_rate"], "seen_stopped": chosen["mean_share"],
                "seen_all": chosen["mean_share_all"]}
    report = point["report"]
    harmful = report.get("delay", {}).get("harmful", {})
    return {"macro_f1": report["macro_f1"], "harmful_recall": report["harmful_recall"], "benign_stops": report["far"],
            "seen_stopped": harmful.get("mean_share"), "seen_all": harmful.get("mean_share_all")}


def training_of(summary: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The training summary of the model an evaluation scored: in the model folder when it is still on disk, else
    the copy run-realmix.sh keeps beside the evaluation folder (``training-summary-<folder name>.json``)."""
    path = Path(summary.get("model", {}).get("path", ""))
    for candidate in (path / "training_summary.json", REPO_ROOT / path / "training_summary.json",
                      folder.parent / f"training-summary-{folder.name}.json"):
        if candidate.is_file():
            return read_json(candidate)
    return None


def run_row(label: str, folder: str | Path, split: str, scorer: str) -> dict[str, Any]:
    """One row: the scorer's leak-free and budget points of the evaluation in ``folder`` on ``split``.

    Raises:
        FileNotFoundError: no summary.json in ``folder``. DataFormatError: not a partial evaluation of ``scorer``,
            or ``split`` neither the selection nor the evaluated split.
    """
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no evaluation summary (the --output-dir of a partial evaluation, e.g. "
                                f"`bash scripts/run-scm.sh test ...`)")
    summary = read_json(path)
    partial = summary.get("partial", {}).get(scorer)
    if not partial or "leak_free" not in partial:
        raise DataFormatError(f"{path}: no leak-free partial-detection point of the {scorer} scorer (scorers there: "
                              f"{', '.join(summary.get('partial', {})) or 'none'}); pass --scorer")
    leak_free = partial["leak_free"]
    if split not in (leak_free.get("selected_on"), summary.get("eval_split")):
        raise DataFormatError(f"{path}: --split {split} is neither the split the points were chosen on "
                              f"({leak_free.get('selected_on')}) nor the evaluated one ({summary.get('eval_split')})")
    row: dict[str, Any] = {"label": label, "folder": str(folder), "theta": leak_free["theta"], "k": leak_free["k"],
                           **point_numbers(leak_free, split)}
    budget = partial.get("leak_free_budget")
    if budget:
        numbers = point_numbers(budget, split)
        row.update(budget_theta=budget["theta"], budget_k=budget["k"], budget_recall=numbers["harmful_recall"],
                   budget_benign_stops=numbers["benign_stops"])
    training = training_of(summary, Path(folder))
    if training:
        row.update(train_examples=training["data"].get("train_examples"),
                   train_seconds=training["result"].get("wall_seconds"),
                   val_loss=training["result"].get("eval", {}).get("eval_loss"))
    return row


def mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one run) of every metric over ``rows``."""
    result: dict[str, Any] = {"label": f"mean ± sd ({len(rows)} runs)"}
    for metric in METRICS:
        values = [r[metric] for r in rows if r.get(metric) is not None]
        if values:
            result[metric] = statistics.fmean(values)
            result[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return result


def _cell(row: dict[str, Any], metric: str) -> str:
    value = row.get(metric)
    if value is None:
        return "–"
    sd = row.get(f"{metric}_sd")
    return f"{100 * value:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def markdown(rows: Sequence[dict[str, Any]], split: str, scorer: str, mean: dict[str, Any] | None) -> str:
    """The table (percentages), a mean row when given, and what the columns mean."""
    header = ["run", "θ", "k", *(HEADERS[m] for m in METRICS), "training responses", "training wall s",
              "best val loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], f"{row['theta']:g}", str(row["k"]), *(_cell(row, m) for m in METRICS),
                 str(row.get("train_examples", "–")),
                 f"{row['train_seconds']:.0f}" if row.get("train_seconds") is not None else "–",
                 f"{row['val_loss']:.4f}" if row.get("val_loss") is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    if mean:
        lines.append("| " + " | ".join([f"**{mean['label']}**", "", "", *(_cell(mean, m) for m in METRICS),
                                        "", "", ""]) + " |")
    note = (f"{scorer} scorer, {split} split (%). The leak-free point (θ, k) is the best macro-F1 on validation; "
            f"*budget* is the best macro-F1 among the points that stop at most the budget's share of benign "
            f"validation responses. *seen (stopped)*: mean share of its tokens a stopped harmful response had shown; "
            f"*seen (all)*: over every harmful response, a missed one counted as 100%. Training columns: the model "
            f"folder's training_summary.json, or the copy beside the evaluation.")
    return "\n".join([*lines, "", note, ""])


@dataclass
class CompareArguments:
    """Flags of ``python -m utils.evaluation.compare``."""

    run: list[str] = field(metadata={"help": "LABEL=FOLDER of each evaluation, in table order (quote a label with "
                                             "spaces: --run 'seed 42=results/realmix2/scm' 'seed 43=...')."})
    output: str = field(metadata={"help": "Markdown file to write (atomically)."})
    split: str = field(default="val", metadata={"help": "val (the split the points were chosen on: an ablation) or "
                                                        "test (their report: seeds).", "choices": ["val", "test"]})
    scorer: str = field(default="token", metadata={"help": "Which partial scorer: token or holistic."})
    mean: bool = field(default=False, metadata={"help": "Add a mean ± sample-sd row over the runs."})
    title: str | None = field(default=None, metadata={"help": "A heading line for the file."})


def parse_runs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``[(label, folder)]`` from ``LABEL=FOLDER`` strings.

    Raises:
        ValueError: a spec without ``=`` or with an empty side.
    """
    runs = []
    for spec in specs:
        label, sep, folder = spec.partition("=")
        if not sep or not label.strip() or not folder.strip():
            raise ValueError(f"--run expects LABEL=FOLDER (e.g. 'seed 43=results/realmix2/seeds/seed43/scm'), got "
                             f"'{spec}'")
        runs.append((label.strip(), folder.strip()))
    return runs


def main(args: CompareArguments) -> str:
    """Write the table to ``args.output`` and return it."""
    rows = [run_row(label, folder, args.split, args.scorer) for label, folder in parse_runs(args.run)]
    text = markdown(rows, args.split, args.scorer, mean_row(rows) if args.mean else None)
    if args.title:
        text = f"# {args.title}\n\n{text}"
    write_text(args.output, text)
    print(text)
    return text


if __name__ == "__main__":
    from utils.cli import run_entry_point

    run_entry_point(main, CompareArguments, "python -m utils.evaluation.compare",
                    errors=(ValueError, FileNotFoundError, DataFormatError))
