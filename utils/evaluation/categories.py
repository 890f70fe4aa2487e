"""Why it stopped, measured: per harm category, how many harmful responses the operating point stops and how early,
and whether the category head names the right category at the stop.

Inputs are the evaluation's own files: prediction records (``utils/evaluation/predictions.py``; a checkpoint with a
category head adds ``category_ids``, the head's most likely category per response token) and the processed data's
``category`` per record (realmix2's ``meta.category``). Everything here is a pure function of those, so a report
can be recomputed from the files alone.

Categories with fewer than :data:`MIN_SUPPORT` harmful test responses are kept in every table and marked ``thin``:
their rates are counts more than rates (realmix2 test has 7 ``sexual/minors`` responses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from utils.data.categories import ordered_categories
from utils.metrics import delay_statistics, stop_indices

MIN_SUPPORT = 20
# The leak-free rules whose operating points get a per-category table (utils/metrics.py names them).
CATEGORY_RULES = ("leak_free", "leak_free_early", "leak_free_budget")


def per_category(
    records: Sequence[dict[str, Any]],
    stops: Sequence[int | None],
    categories: Mapping[str, str | None],
    min_support: int = MIN_SUPPORT,
) -> dict[str, dict[str, Any]]:
    """Harmful recall and share of tokens seen at the stop, per labelled harm category.

    Args:
        records: prediction records (``id``, ``label``, ``n_response_tokens``).
        stops: the operating point's stop index per record (None: not stopped), as from ``utils.metrics.stop_indices``.
        categories: the category of each record id (None for benign records); records absent from it are skipped.
        min_support: categories with fewer harmful responses are marked ``thin``.

    Returns:
        ``{category: {"harmful", "stopped", "recall", "mean_share", "median_share", "thin"}}`` in taxonomy order;
        ``mean_share`` / ``median_share`` are over the stopped responses (None when none was stopped).

    Raises:
        ValueError: ``stops`` and ``records`` differ in length.
    """
    if len(stops) != len(records):
        raise ValueError(f"{len(stops)} stop indices for {len(records)} records")
    groups: dict[str, list[tuple[dict[str, Any], int | None]]] = {}
    for record, stop in zip(records, stops):
        category = categories.get(str(record["id"]))
        if record["label"] == 1 and category is not None:
            groups.setdefault(category, []).append((record, stop))
    table = {}
    for category in ordered_categories(groups):
        members = groups[category]
        # the reports' own delay statistics over this category's responses (all harmful)
        stats = delay_statistics([r for r, _ in members], [s for _, s in members])["harmful"]
        table[category] = {
            "harmful": len(members),
            "stopped": stats["stopped"],
            "recall": stats["stopped_rate"],
            "mean_share": stats["mean_share"],
            "median_share": stats["median_share"],
            "thin": len(members) < min_support,
        }
    return table


def named_at_stop(
    records: Sequence[dict[str, Any]],
    stops: Sequence[int | None],
    categories: Mapping[str, str | None],
    head_labels: Sequence[str],
) -> dict[str, Any] | None:
    """The category the head names at each stop of a labelled harmful response, against its label.

    Args:
        records: prediction records; those of a checkpoint with a category head carry ``category_ids`` (one index
            into ``head_labels`` per response token).
        stops: stop index per record (None: not stopped).
        categories: the category of each record id.
        head_labels: the head's category names (``SCMConfig.category_labels``).

    Returns:
        None when no record carries ``category_ids``; else ``{"responses", "correct", "accuracy", "labels",
        "predicted_labels", "matrix"}``: ``matrix[i][j]`` counts stopped harmful responses labelled ``labels[i]``
        whose stop names ``predicted_labels[j]``; ``accuracy`` is None when nothing was stopped.
    """
    if not any("category_ids" in record for record in records):
        return None
    pairs = []
    for record, stop in zip(records, stops):
        category = categories.get(str(record["id"]))
        if record["label"] != 1 or category is None or stop is None or "category_ids" not in record:
            continue
        pairs.append((category, head_labels[int(record["category_ids"][stop])]))
    labels = ordered_categories(true for true, _ in pairs)
    predicted_labels = ordered_categories(list(head_labels) + [predicted for _, predicted in pairs])
    matrix = [[0] * len(predicted_labels) for _ in labels]
    for true, predicted in pairs:
        matrix[labels.index(true)][predicted_labels.index(predicted)] += 1
    correct = sum(1 for true, predicted in pairs if true == predicted)
    return {
        "responses": len(pairs),
        "correct": correct,
        "accuracy": correct / len(pairs) if pairs else None,
        "labels": labels,
        "predicted_labels": predicted_labels,
        "matrix": matrix,
    }


def category_markdown(table: Mapping[str, Mapping[str, Any]], named: Mapping[str, Any] | None) -> str:
    """A markdown table of :func:`per_category` (and the head's accuracy per category when ``named`` is given)."""
    per_label_accuracy = {}
    if named is not None:
        for i, label in enumerate(named["labels"]):
            row = named["matrix"][i]
            total = sum(row)
            hit = row[named["predicted_labels"].index(label)] if label in named["predicted_labels"] else 0
            per_label_accuracy[label] = (hit, total)
    header = "| category | harmful | stopped | recall % | mean share seen % |"
    rule = "|---|---|---|---|---|"
    if named is not None:
        header += " named right at the stop |"
        rule += "---|"
    lines = [header, rule]
    for category, row in table.items():
        share = "-" if row["mean_share"] is None else f"{100 * row['mean_share']:.1f}"
        name = f"{category} (thin)" if row["thin"] else category
        line = f"| {name} | {row['harmful']} | {row['stopped']} | {100 * row['recall']:.1f} | {share} |"
        if named is not None:
            hit, total = per_label_accuracy.get(category, (0, 0))
            line += f" {hit} of {total} |"
        lines.append(line)
    if named is not None and named["accuracy"] is not None:
        lines.append("")
        lines.append(f"Category named at the stop: {named['correct']} of {named['responses']} right "
                     f"({100 * named['accuracy']:.1f}%).")
    return "\n".join(lines) + "\n"


def write_confusion_plot(named: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Draw the confusion matrix of :func:`named_at_stop` (rows: label, columns: named at the stop) as a PNG.

    Args:
        named: the output of :func:`named_at_stop`.
        path: the PNG to write (written to a temporary name, then renamed).
        title: the plot's title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    labels, predicted, matrix = named["labels"], named["predicted_labels"], named["matrix"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(predicted), 1.2 + 0.45 * max(len(labels), 1)))
    ax.imshow(matrix if matrix else [[0]], cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(predicted)), predicted, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    ax.set_xlabel("category named at the stop")
    ax.set_ylabel("label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def has_category_labels(records: Sequence[dict[str, Any]]) -> bool:
    """True when the prediction records carry the data's harm categories (realmix2-style data)."""
    return any("category" in record for record in records)


def category_summary(
    records: Sequence[dict[str, Any]],
    partial: Mapping[str, Mapping[str, Any]],
    head_labels: Sequence[str] | None,
    min_support: int = MIN_SUPPORT,
) -> dict[str, Any]:
    """Per category, at each leak-free operating point of each scorer: recall, share seen, and the category the
    head names at the stop.

    Args:
        records: the reported split's prediction records (with ``category``; ``category_ids`` with a head).
        partial: ``summary["partial"]``: per scorer, the protocols' points (``leak_free`` etc. with theta and k).
        head_labels: the checkpoint's category names, or None (no head: no confusion matrix).
        min_support: see :func:`per_category`.

    Returns:
        ``{"head_labels", "min_support", "by_scorer": {scorer: {rule: {"theta", "k", "per_category",
        "named_at_stop"}}}}``.
    """
    categories = {str(r["id"]): r.get("category") for r in records}
    by_scorer: dict[str, dict[str, Any]] = {}
    for scorer, protocols in partial.items():
        rules = {}
        for rule in CATEGORY_RULES:
            point = protocols.get(rule)
            if not point:
                continue
            stops = stop_indices(records, scorer, point["theta"], point["k"])
            rules[rule] = {
                "theta": point["theta"], "k": point["k"],
                "per_category": per_category(records, stops, categories, min_support),
                "named_at_stop": named_at_stop(records, stops, categories, head_labels) if head_labels else None,
            }
        by_scorer[scorer] = rules
    return {"head_labels": list(head_labels) if head_labels else None, "min_support": min_support,
            "by_scorer": by_scorer}


def category_report_section(summary: Mapping[str, Any]) -> str:
    """The report.md section of :func:`category_summary` (empty when the data name no categories)."""
    section = summary.get("categories")
    if not section:
        return ""
    lines = ["", "## Harm categories", "",
             f"Per labelled category of the {summary.get('eval_split')} split, at each leak-free operating point "
             f"(categories with fewer than {section['min_support']} harmful responses are marked thin)."]
    if not section.get("head_labels"):
        lines.append("The checkpoint has no category head (`--category-head`): recall and share seen only.")
    for scorer, rules in section["by_scorer"].items():
        for rule, entry in rules.items():
            lines += ["", f"### {scorer} scorer, {rule} (theta {entry['theta']:g}, k {entry['k']})", "",
                      category_markdown(entry["per_category"], entry["named_at_stop"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def write_category_plots(output_dir: str | Path, summary: Mapping[str, Any]) -> list[str]:
    """The confusion matrix of the category named at the stop, at each scorer's leak-free point (a checkpoint with
    a category head only); returns the file names written."""
    names = []
    for scorer, rules in summary["categories"]["by_scorer"].items():
        entry = rules.get("leak_free")
        if entry and entry["named_at_stop"] and entry["named_at_stop"]["responses"]:
            name = f"categories-confusion-{scorer}.png"
            write_confusion_plot(entry["named_at_stop"], Path(output_dir) / name,
                                 f"{scorer} scorer, leak-free point (theta {entry['theta']:g}, k {entry['k']}): "
                                 f"category named at the stop")
            names.append(name)
    return names
