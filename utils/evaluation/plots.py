"""PNG plots of a partial-detection evaluation (matplotlib, headless Agg backend).

- macro-F1 against k, one line per theta (the reported split solid, the validation split dashed), with the
  leak-free operating points and the paper protocol's k per threshold marked: how sensitive the monitor is to its
  two knobs;
- the frontier: macro-F1 against the mean share of tokens seen, over the whole theta x k grid of the reported split,
  with its Pareto front and the chosen points: what an earlier stop costs. The share is
  ``mean_share_all`` of ``utils/metrics.py``: the mean over every non-empty harmful response of the share of its
  response tokens read up to the stop, a harmful response never stopped counted as 100%;
- the stop-position histogram (share of tokens seen when stopped, 10% bins) for harmful responses and for benign
  responses stopped by mistake: the paper's "how early" figure;
- score traces of a few responses: each scorer's per-prefix harmful probability along the response, the
  threshold, the stop position and the tokens labelled harmful;
- the false-stop trade-off (``recall-vs-benign-stops.png``): harmful recall against the benign stop rate (share of
  benign responses stopped), one curve per scorer (the upper envelope over the theta x k grid), on the validation
  and reported splits, with the budget and the points chosen under it: what a deployer's false-stop budget buys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: evaluation runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from utils.decision_rules import delay_k_stop_index  # noqa: E402
from utils.io_utils import atomic_write  # noqa: E402
from utils.metrics import DELAY_BIN_LABELS  # noqa: E402


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


_POINT_MARKERS = (("leak_free", "o", "leak-free"), ("leak_free_early", "s", "leak-free, early"),
                  ("leak_free_budget", "D", "leak-free, budget"))
TRADE_OFF_PLOT = "recall-vs-benign-stops.png"


def _chosen_points(partial: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """``(point, marker, label)`` of the leak-free points present in a partial-protocols result."""
    return [(partial[key], marker, label) for key, marker, label in _POINT_MARKERS if partial.get(key)]


def plot_macro_f1_vs_k(partial: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Macro-F1 against k per theta from :func:`utils.metrics.partial_protocols` output.

    Lines count every response token (the leak-free protocols' counting); the paper protocol's point per threshold
    (stars, labelled tokens only) is drawn at its own macro-F1.

    Args:
        partial: the protocols result (its ``sweep`` holds ``{split: {"macro_f1": {theta_key: [k = 1..]}}}``).
        path: PNG file to write (atomically).
        title: figure title.

    Returns:
        The PNG path.
    """
    fig, ax = plt.subplots(figsize=(7, 4.2))
    eval_split, select_split = partial["eval_split"], partial.get("select_split")
    colors = {}
    for key, values in partial["sweep"][eval_split]["macro_f1"].items():
        (line,) = ax.plot(range(1, len(values) + 1), [100 * v for v in values], label=f"θ={key} ({eval_split})")
        colors[key] = line.get_color()
    if select_split:
        for key, values in partial["sweep"][select_split]["macro_f1"].items():
            ax.plot(range(1, len(values) + 1), [100 * v for v in values], linestyle="--", alpha=0.6,
                    color=colors.get(key), label=f"θ={key} ({select_split})")
    for key, point in partial["paper"].items():
        ax.plot([point["k"]], [100 * point["report"]["macro_f1"]], marker="*", markersize=11, color=colors.get(key),
                markeredgecolor="black", linestyle="none",
                label="paper: k per θ (labelled tokens)" if key == next(iter(partial["paper"])) else None)
    for point, marker, label in _chosen_points(partial):
        ax.plot([point["k"]], [100 * point["report"]["macro_f1"]], marker=marker, markersize=10, color="black",
                fillstyle="none", linestyle="none", label=f"{label}: θ={point['theta']:g}, k={point['k']}")
    ax.set_xlabel("k (flagged tokens before stopping)")
    ax.set_ylabel("macro-F1 (%)")
    ax.set_title(title or f"Partial detection, {partial['scorer']} scorer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_frontier(partial: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Macro-F1 against the mean share of tokens seen over the theta x k grid of the reported split, its Pareto
    front, and the chosen points.

    Args:
        partial: :func:`utils.metrics.partial_protocols` output (``sweep``, ``frontier`` and the points).
        path: PNG file to write (atomically).
        title: figure title.

    Returns:
        The PNG path.
    """
    split = partial["eval_split"]
    grid = partial["sweep"][split]
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for key, values in grid["macro_f1"].items():
        shares = grid["mean_share_all"][key]
        xs = [100 * s for s, v in zip(shares, values) if s is not None]
        ys = [100 * v for s, v in zip(shares, values) if s is not None]
        ax.scatter(xs, ys, s=10, alpha=0.5, label=f"θ={key}, k=1..{len(values)}")
    front = partial["frontier"].get(split) or []
    if front:
        ax.step([100 * p["mean_share_all"] for p in front], [100 * p["macro_f1"] for p in front], where="post",
                color="black", linewidth=1, label="frontier")
    for point, marker, label in _chosen_points(partial):
        share = point["report"]["delay"]["harmful"]["mean_share_all"]
        if share is not None:
            ax.plot([100 * share], [100 * point["report"]["macro_f1"]], marker=marker, markersize=11, color="black",
                    fillstyle="none", linestyle="none", label=f"{label}: θ={point['theta']:g}, k={point['k']}")
    ax.set_xlabel("harmful responses: mean % of tokens seen at the stop (never stopped = 100%)")
    ax.set_ylabel(f"macro-F1 on {split} (%)")
    ax.set_title(title or f"Macro-F1 vs tokens seen, {partial['scorer']} scorer ({split}, every token counted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_stop_histogram(delay: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Bars of stop positions (share of tokens seen) for harmful stops and benign false stops.

    Args:
        delay: :func:`utils.metrics.delay_statistics` output.
        path: PNG file to write.
        title: figure title.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    positions = range(len(DELAY_BIN_LABELS))
    width = 0.4
    harmful, benign = delay["harmful"], delay["benign"]
    ax.bar([p - width / 2 for p in positions], harmful["histogram"], width,
           label=f"harmful stopped ({harmful['stopped']}/{harmful['responses']})")
    ax.bar([p + width / 2 for p in positions], benign["histogram"], width,
           label=f"benign stopped by mistake ({benign['stopped']}/{benign['responses']})")
    ax.set_xticks(list(positions), DELAY_BIN_LABELS, rotation=45, fontsize=8)
    ax.set_xlabel("share of the response's tokens seen when stopped")
    ax.set_ylabel("responses")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title or "Stop positions")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pick_trace_examples(records: Sequence[dict[str, Any]], n: int = 4) -> list[dict[str, Any]]:
    """Up to ``n`` non-empty responses for score traces: harmful and benign alternately, in file order."""
    harmful = [r for r in records if r["label"] == 1 and r["n_response_tokens"] > 0]
    benign = [r for r in records if r["label"] == 0 and r["n_response_tokens"] > 0]
    picked = []
    for pair in zip(harmful, benign):
        picked.extend(pair)
    picked.extend(harmful[len(benign):] + benign[len(harmful):])
    return picked[:n]


def plot_score_traces(
    records: Sequence[dict[str, Any]],
    scorers: Sequence[str],
    theta: float,
    k: int,
    path: str | os.PathLike,
    n_examples: int = 4,
) -> Path:
    """Per-prefix scores of a few responses, with theta, the delay-k stop and harmful-labelled tokens shaded.

    Args:
        records: prediction records holding ``scores`` for every name in ``scorers``.
        scorers: score lists to draw.
        theta, k: the operating point whose stop position is marked (per scorer).
        path: PNG file to write.
        n_examples: how many responses (harmful and benign alternately).
    """
    examples = pick_trace_examples(records, n_examples)
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.4 * rows), squeeze=False, constrained_layout=True)
    for ax, record in zip(axes[:, 0], examples):
        for position, label in enumerate(record.get("token_labels", [])):
            if label == 1:
                ax.axvspan(position - 0.5, position + 0.5, color="red", alpha=0.12, linewidth=0)
        for scorer in scorers:
            values = record["scores"][scorer]
            (line,) = ax.plot(range(len(values)), values, label=scorer)
            stop = delay_k_stop_index(values, theta, k)
            if stop is not None:
                ax.axvline(stop, color=line.get_color(), linestyle=":", label=f"{scorer} stop @ {stop}")
        ax.axhline(theta, color="gray", linestyle="--", linewidth=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{record['id']} (label {'harmful' if record['label'] else 'benign'})", fontsize=9)
        ax.set_ylabel("P(harmful)")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel(f"response token (θ = {theta:g}, k = {k}; shaded: labelled harmful)")
    return _save(fig, path)


def recall_envelope(rates: Sequence[float], recalls: Sequence[float]) -> list[tuple[float, float]]:
    """The upper envelope of (benign stop rate, harmful recall) points: those no other point beats with a lower or
    equal rate and a higher recall, by increasing rate (the ROC-like curve of the theta x k grid)."""
    envelope: list[tuple[float, float]] = []
    for rate, recall in sorted(zip(rates, recalls), key=lambda item: (item[0], -item[1])):
        if not envelope or recall > envelope[-1][1]:
            envelope.append((rate, recall))
    return envelope


def plot_recall_vs_benign_stops(partials: dict[str, dict[str, Any]], path: str | os.PathLike) -> Path:
    """Harmful recall against benign stop rate, one curve per scorer, a panel per split (selection, reported).

    Each scorer's grid points (every theta and k, every token counted) are drawn faintly, with their upper envelope
    as the curve; the false-stop budget is a dotted vertical line, and the budget point (diamond) and the max-F1
    leak-free point (circle) are marked at their values on each split.

    Args:
        partials: ``{scorer: partial_protocols(...)}`` of one run (``metrics["partial"]``).
        path: PNG file to write (atomically).

    Returns:
        The PNG path.
    """
    first = next(iter(partials.values()))
    splits = [s for s in (first.get("select_split"), first["eval_split"]) if s and s in first["sweep"]]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.4), squeeze=False, sharey=True)
    budget = first.get("max_benign_stop_rate")
    for ax, split in zip(axes[0], splits):
        for number, (scorer, partial) in enumerate(partials.items()):
            grid = partial["sweep"].get(split) or {}
            if "benign_stop_rate" not in grid:
                continue
            color = f"C{number}"  # one colour per scorer on both panels
            rates = [100 * r for values in grid["benign_stop_rate"].values() for r in values]
            recalls = [100 * r for values in grid["harmful_recall"].values() for r in values]
            ax.scatter(rates, recalls, s=8, alpha=0.25, color=color)
            envelope = recall_envelope(rates, recalls)
            ax.step([e[0] for e in envelope], [e[1] for e in envelope], where="post", color=color, linewidth=1.5,
                    label=f"{scorer} scorer")
            for key, marker, label in (("leak_free_budget", "D", "budget"), ("leak_free", "o", "leak-free")):
                point = partial.get(key)
                if not point:
                    continue
                stats = point.get("selection_report") if split == partial.get("select_split") else None
                if split == partial["eval_split"]:
                    stats = {"benign_stop_rate": point["report"]["far"],
                             "harmful_recall": point["report"]["harmful_recall"]}
                if stats:
                    ax.plot([100 * stats["benign_stop_rate"]], [100 * stats["harmful_recall"]], marker=marker,
                            markersize=9, color=color, markeredgecolor="black", linestyle="none",
                            label=f"{scorer} {label}: θ={point['theta']:g}, k={point['k']}")
        if budget is not None:
            ax.axvline(100 * budget, color="gray", linestyle=":", linewidth=1,
                       label=f"budget: {100 * budget:g}% benign stops")
        ax.set_xlabel(f"benign responses stopped on {split} (%)")
        ax.set_title(f"{split}" + (" (chosen here)" if split == first.get("select_split") else " (reported)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("harmful responses stopped (recall, %)")
    fig.suptitle("Harmful recall vs benign stop rate over the θ × k grid (delay-k, every token counted)",
                 fontsize=10)
    return _save(fig, path)


def _display_point(partial: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The operating point the histogram and traces show: leak-free when validation was scored (the honest setting
    a provider would deploy), else the paper protocol's point at the first threshold (no theta is selected then)."""
    if partial.get("leak_free"):
        return partial["leak_free"], "leak-free"
    return next(iter(partial["paper"].values())), "paper"


def write_partial_plots(output_dir: Path, metrics: dict[str, Any], eval_records: list[dict[str, Any]]) -> list[str]:
    """Write every plot of a run's partial-detection results (none for full-only runs).

    Args:
        output_dir: the evaluation folder.
        metrics: :func:`utils.metrics.evaluate_records` output.
        eval_records: prediction records of the reported split (for the score traces).

    Returns:
        The PNG file names written.
    """
    names = []
    for scorer, partial in metrics["partial"].items():
        point, protocol = _display_point(partial)
        plot_macro_f1_vs_k(partial, output_dir / f"macro-f1-vs-k-{scorer}.png",
                           f"Partial detection, {scorer} scorer: macro-F1 vs k")
        plot_frontier(partial, output_dir / f"frontier-{scorer}.png")
        plot_stop_histogram(point["report"]["delay"], output_dir / f"stop-histogram-{scorer}.png",
                            f"Stop positions, {scorer} scorer ({protocol}: θ={point['theta']:g}, k={point['k']})")
        names += [f"macro-f1-vs-k-{scorer}.png", f"frontier-{scorer}.png", f"stop-histogram-{scorer}.png"]
    if metrics["partial"]:
        plot_recall_vs_benign_stops(metrics["partial"], output_dir / TRADE_OFF_PLOT)
        names.append(TRADE_OFF_PLOT)
        point, _ = _display_point(next(iter(metrics["partial"].values())))
        plot_score_traces(eval_records, list(metrics["partial"]), point["theta"], point["k"],
                          output_dir / "score-traces.png")
        names.append("score-traces.png")
    return names
