"""Metrics: pure functions over prediction records (``utils/predictions.py``), nothing else.

Conventions (fixed here so that every number in a report can be recomputed by hand):

- Harmful is the positive class: ``tp`` = harmful flagged, ``fp`` = benign flagged, ``tn`` = benign passed,
  ``fn`` = harmful missed. Per-class precision/recall/F1 are computed for both classes; macro-F1 is their mean
  (always over both classes, like scikit-learn's ``precision_recall_fscore_support(labels=[0, 1])``).
- Every ratio with a zero denominator is 0.0 (scikit-learn's ``zero_division=0``), e.g. harmful precision when
  nothing is flagged. FAR = benign flagged / benign; MAR = harmful missed / harmful.
- A score *reaches* a threshold when ``score >= theta`` (full score, token score and delay-k alike).
- Partial detection uses the shared delay-k rule (:func:`utils.decision_rules.delay_k_stop_index`): a response is
  predicted harmful iff the rule fires on it; the stop index is where it fires.
- Operating-point selection maximises macro-F1; ties go to the smallest k, then the smallest theta (earlier
  stopping first, then the less strict threshold). Macro-F1 values are compared rounded to 12 decimals so that
  mathematically equal values from different counts tie.
- Stop delay: for a stopped response, ``share = (stop_index + 1) / n_response_tokens`` (the share of its tokens
  the monitor had seen when it fired). Histogram bins are (0, 10%], (10%, 20%], ..., (90%, 100%]: upper edges are
  inclusive, so a stop at exactly 10% is in the first bin; bins are computed in exact integer arithmetic.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from utils.decision_rules import delay_k_stop_index
from utils.io_utils import DataFormatError

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
MAX_K = 50
N_DELAY_BINS = 10
DELAY_BIN_EDGES = tuple(i / N_DELAY_BINS for i in range(N_DELAY_BINS + 1))
DELAY_BIN_LABELS = tuple(f"{10 * i}-{10 * (i + 1)}%" for i in range(N_DELAY_BINS))
_TIE_DECIMALS = 12


def theta_key(theta: float) -> str:
    """The JSON key and file-name form of a threshold: ``0.5`` -> ``"0.5"``."""
    return f"{theta:g}"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    # 2tp / (2tp + fp + fn) equals 2PR / (P + R) and is what scikit-learn computes.
    return _ratio(2 * tp, 2 * tp + fp + fn)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, Any]:
    """Response-level (or token-level) report, harmful = positive.

    Args:
        y_true: 0/1 labels.
        y_pred: 0/1 predictions, same length.

    Returns:
        ``benign_precision``, ``benign_recall``, ``benign_f1``, ``harmful_precision``, ``harmful_recall``,
        ``harmful_f1``, ``macro_f1``, ``accuracy``, ``far``, ``mar`` (floats in [0, 1]) and ``tp``, ``fp``, ``tn``,
        ``fn``, ``n``, ``n_harmful``, ``n_benign`` (ints). Zero denominators give 0.0.

    Raises:
        ValueError: different lengths or values other than 0/1.
    """
    true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} values but y_pred has {pred.size}")
    if np.any((true != 0) & (true != 1)) or np.any((pred != 0) & (pred != 1)):
        raise ValueError("labels and predictions must be 0 or 1")
    tp = int(np.sum((true == 1) & (pred == 1)))
    fp = int(np.sum((true == 0) & (pred == 1)))
    tn = int(np.sum((true == 0) & (pred == 0)))
    fn = int(np.sum((true == 1) & (pred == 0)))
    harmful_f1, benign_f1 = _f1(tp, fp, fn), _f1(tn, fn, fp)
    return {
        "benign_precision": _ratio(tn, tn + fn),
        "benign_recall": _ratio(tn, tn + fp),
        "benign_f1": benign_f1,
        "harmful_precision": _ratio(tp, tp + fp),
        "harmful_recall": _ratio(tp, tp + fn),
        "harmful_f1": harmful_f1,
        "macro_f1": (harmful_f1 + benign_f1) / 2,
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "far": _ratio(fp, fp + tn),
        "mar": _ratio(fn, fn + tp),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": tp + fp + tn + fn,
        "n_harmful": tp + fn,
        "n_benign": tn + fp,
    }


def _labels(records: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.asarray([record["label"] for record in records], dtype=np.int64)


def _check_nonempty(records: Sequence[dict[str, Any]]) -> None:
    if not records:
        raise DataFormatError("no prediction records: the split is empty")


def _full_scores(records: Sequence[dict[str, Any]]) -> np.ndarray:
    missing = [i for i, record in enumerate(records) if "full_score" not in record]
    if missing:
        raise DataFormatError(
            f"record {missing[0]} (id {records[missing[0]].get('id')!r}) has no 'full_score': full-detection metrics "
            f"need it; evaluate with test/test_qwen_full.py or test/test_modernbert_full.py"
        )
    return np.asarray([record["full_score"] for record in records], dtype=np.float64)


def _scores(record: dict[str, Any], scorer: str, index: int) -> list[float]:
    scores = record.get("scores") or {}
    if scorer not in scores:
        raise DataFormatError(
            f"record {index} (id {record.get('id')!r}) has no scores[{scorer!r}] (present: {sorted(scores)}); "
            f"choose a scorer the predictions were written with"
        )
    return scores[scorer]


def full_detection(records: Sequence[dict[str, Any]], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Full detection: a response is flagged when ``full_score >= theta``.

    Args:
        records: prediction records with ``full_score``.
        thresholds: the thresholds to report.

    Returns:
        ``{theta_key(theta): classification_report}``.

    Raises:
        DataFormatError: no records, or a record without ``full_score``.
    """
    _check_nonempty(records)
    labels, scores = _labels(records), _full_scores(records)
    return {theta_key(t): {"theta": float(t), **classification_report(labels, scores >= t)} for t in thresholds}


def token_level(
    records: Sequence[dict[str, Any]], scorer: str, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """Token-level report over the labelled response tokens (``token_labels != -100``): a token is predicted
    harmful when its score reaches theta.

    Args:
        records: records with ``token_labels`` and ``scores[scorer]``.
        scorer: which score list to use (``token`` or ``holistic``).
        thresholds: the thresholds to report.

    Returns:
        ``{theta_key(theta): classification_report}`` with ``n`` = number of labelled tokens.

    Raises:
        DataFormatError: no records, a missing score list or missing ``token_labels``.
    """
    _check_nonempty(records)
    labels, scores = [], []
    for index, record in enumerate(records):
        if "token_labels" not in record:
            raise DataFormatError(f"record {index} (id {record.get('id')!r}) has no 'token_labels'")
        labels.extend(record["token_labels"])
        scores.extend(_scores(record, scorer, index))
    label_array = np.asarray(labels, dtype=np.int64)
    score_array = np.asarray(scores, dtype=np.float64)
    keep = label_array != -100
    label_array, score_array = label_array[keep], score_array[keep]
    return {theta_key(t): {"theta": float(t), **classification_report(label_array, score_array >= t)}
            for t in thresholds}


def stop_indices(records: Sequence[dict[str, Any]], scorer: str, theta: float, k: int) -> list[int | None]:
    """Where the delay-k rule stops each response (0-based response-token index), or None when it never fires.

    Args:
        records: records with ``scores[scorer]``.
        scorer: score list name.
        theta: token threshold.
        k: number of flagged tokens (cumulative) that stops the response.

    Raises:
        DataFormatError: a record without ``scores[scorer]``.
    """
    return [delay_k_stop_index(_scores(record, scorer, i), theta, k) for i, record in enumerate(records)]


def _share_bin(stop_index: int, n_tokens: int) -> int:
    # ceil(10 * (stop + 1) / n) - 1 in integers: a float share such as 3/10 * 10 = 3.0000000000000004 would land
    # in the wrong bin.
    return (N_DELAY_BINS * (stop_index + 1) + n_tokens - 1) // n_tokens - 1


def _stop_group(stops: list[tuple[int, int]], total: int) -> dict[str, Any]:
    """Statistics of the stopped responses of one class; ``stops`` holds (stop_index, n_response_tokens)."""
    shares = [(stop + 1) / n for stop, n in stops]
    histogram = [0] * N_DELAY_BINS
    for stop, n in stops:
        histogram[_share_bin(stop, n)] += 1
    stopped = len(stops)
    return {
        "responses": total,
        "stopped": stopped,
        "not_stopped": total - stopped,
        "stopped_rate": _ratio(stopped, total),
        # None (JSON null) rather than 0.0: "nothing was stopped" must not read as "stopped instantly".
        "mean_share": statistics.fmean(shares) if shares else None,
        "median_share": statistics.median(shares) if shares else None,
        "histogram": histogram,
        "within_10pct": _ratio(histogram[0], stopped) if stopped else None,
        "within_30pct": _ratio(sum(histogram[:3]), stopped) if stopped else None,
    }


def delay_statistics(records: Sequence[dict[str, Any]], stops: Sequence[int | None]) -> dict[str, Any]:
    """How early the rule stops: share of tokens seen at the stop, for harmful responses (true stops) and for
    benign responses (false alarms).

    Args:
        records: prediction records (``label``, ``n_response_tokens``).
        stops: one stop index (or None) per record, as from :func:`stop_indices`.

    Returns:
        ``{"bin_edges", "bin_labels", "harmful": group, "benign": group}`` where a group has ``responses``,
        ``stopped``, ``not_stopped``, ``stopped_rate``, ``mean_share`` and ``median_share`` (None when nothing was
        stopped), ``histogram`` (10 counts over stopped responses), ``within_10pct`` / ``within_30pct`` (share of
        the *stopped* responses stopped within the first 10% / 30% of their tokens; None when nothing stopped).

    Raises:
        ValueError: lengths differ, or a stop index lies outside its response (e.g. a stop on a zero-length one).
    """
    if len(stops) != len(records):
        raise ValueError(f"{len(stops)} stop indices for {len(records)} records")
    groups: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    totals = {0: 0, 1: 0}
    for record, stop in zip(records, stops):
        label, n = record["label"], record["n_response_tokens"]
        totals[label] += 1
        if stop is None:
            continue
        if not 0 <= stop < n:
            raise ValueError(f"record {record.get('id')!r}: stop index {stop} outside its {n} response tokens")
        groups[label].append((stop, n))
    return {
        "bin_edges": list(DELAY_BIN_EDGES),
        "bin_labels": list(DELAY_BIN_LABELS),
        "harmful": _stop_group(groups[1], totals[1]),
        "benign": _stop_group(groups[0], totals[0]),
    }


def partial_detection(records: Sequence[dict[str, Any]], scorer: str, theta: float, k: int) -> dict[str, Any]:
    """Partial detection at one operating point: flagged iff the delay-k rule fires on the response.

    Args:
        records: records with ``scores[scorer]``.
        scorer: score list name.
        theta: token threshold.
        k: delay.

    Returns:
        ``{"theta", "k", **classification_report, "delay": delay_statistics}``.

    Raises:
        DataFormatError: no records or missing scores.
    """
    _check_nonempty(records)
    stops = stop_indices(records, scorer, theta, k)
    report = classification_report(_labels(records), [int(stop is not None) for stop in stops])
    return {"theta": float(theta), "k": int(k), **report, "delay": delay_statistics(records, stops)}


@dataclass
class Sweep:
    """Macro-F1 of partial detection over a grid: ``macro_f1[theta][k - 1]`` for k = 1..max_k."""

    thetas: tuple[float, ...]
    max_k: int
    macro_f1: dict[float, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, list[float]]:
        """``{theta_key: [macro-F1 for k = 1..max_k]}``."""
        return {theta_key(t): list(values) for t, values in self.macro_f1.items()}


@dataclass(frozen=True)
class OperatingPoint:
    """A chosen (theta, k) and the macro-F1 it reached on the split it was chosen on."""

    theta: float
    k: int
    macro_f1: float


def sweep_partial(
    records: Sequence[dict[str, Any]], scorer: str, thetas: Sequence[float] = THRESHOLDS, max_k: int = MAX_K
) -> Sweep:
    """Macro-F1 of the delay-k rule for every theta and k = 1..max_k.

    The delay-k rule fires on a response iff it has at least k flagged tokens in total (the count is cumulative),
    so classification only needs each response's flagged count; the sweep uses that instead of running the rule
    250 times per response. :func:`partial_protocols` re-checks the selected points against the rule itself, and
    the tests check the whole grid.

    Raises:
        DataFormatError: no records or missing scores. ValueError: ``max_k < 1``.
    """
    _check_nonempty(records)
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    labels = _labels(records)
    arrays = [np.asarray(_scores(record, scorer, i), dtype=np.float64) for i, record in enumerate(records)]
    sweep = Sweep(tuple(float(t) for t in thetas), int(max_k))
    for theta in sweep.thetas:
        flagged = np.asarray([int(np.count_nonzero(a >= theta)) for a in arrays], dtype=np.int64)
        sweep.macro_f1[theta] = [classification_report(labels, flagged >= k)["macro_f1"] for k in range(1, max_k + 1)]
    return sweep


def _selection_key(macro_f1: float, k: int, theta: float) -> tuple[float, int, float]:
    return (-round(macro_f1, _TIE_DECIMALS), k, theta)


def best_point(sweep: Sweep, thetas: Sequence[float] | None = None) -> OperatingPoint:
    """The (theta, k) with the highest macro-F1 (ties: smallest k, then smallest theta).

    Args:
        sweep: the grid.
        thetas: restrict to these thresholds (one theta gives the paper code's "best k per theta").

    Raises:
        ValueError: when none of ``thetas`` is in the sweep.
    """
    candidates = [t for t in sweep.thetas if thetas is None or t in set(float(x) for x in thetas)]
    if not candidates:
        raise ValueError(f"none of the thresholds {thetas} is in the sweep ({sweep.thetas})")
    best = min(
        ((sweep.macro_f1[t][k - 1], k, t) for t in candidates for k in range(1, sweep.max_k + 1)),
        key=lambda item: _selection_key(*item),
    )
    return OperatingPoint(theta=best[2], k=best[1], macro_f1=best[0])


def _checked_partial(records: Sequence[dict[str, Any]], scorer: str, point: OperatingPoint, sweep: Sweep) -> dict:
    report = partial_detection(records, scorer, point.theta, point.k)
    # The sweep's closed form and the shared rule must agree; a mismatch would mean the rule changed meaning.
    expected = sweep.macro_f1[point.theta][point.k - 1]
    if abs(report["macro_f1"] - expected) > 1e-12:
        raise RuntimeError(
            f"delay-k sweep ({expected}) and decision rule ({report['macro_f1']}) disagree at theta={point.theta}, "
            f"k={point.k}: utils/decision_rules.py and utils/metrics.py are out of step"
        )
    return report


def partial_protocols(
    eval_records: Sequence[dict[str, Any]],
    select_records: Sequence[dict[str, Any]] | None,
    scorer: str,
    thetas: Sequence[float] = THRESHOLDS,
    max_k: int = MAX_K,
    eval_split: str = "test",
    select_split: str = "val",
) -> dict[str, Any]:
    """Partial detection under the two selection protocols, overall and per theta.

    - ``paper``: the public evaluation's protocol: (theta, k) — or k per theta — chosen by macro-F1 on the
      evaluation split itself (optimistic: it tunes on the data it reports).
    - ``leak_free``: (theta, k) — or k per theta — chosen by macro-F1 on ``select_records`` (validation), then
      reported on the evaluation split. None when no selection records are given.

    Args:
        eval_records: records of the reported split (test).
        select_records: records of the selection split (val), or None.
        scorer: score list name.
        thetas: threshold grid. max_k: k grid is 1..max_k.
        eval_split, select_split: split names recorded in the result.

    Returns:
        ``{"scorer", "eval_split", "select_split", "paper": point, "leak_free": point | None,
        "per_theta": {theta_key: {"paper": point, "leak_free": point | None}}, "sweep": {split: grid}}``, where a
        point is ``{"theta", "k", "selected_on", "selection_macro_f1", "report": partial_detection(...)}``.

    Raises:
        DataFormatError: empty records or missing scores.
    """
    eval_sweep = sweep_partial(eval_records, scorer, thetas, max_k)
    select_sweep = sweep_partial(select_records, scorer, thetas, max_k) if select_records is not None else None
    cache: dict[tuple[float, int], dict] = {}

    def point(chosen: OperatingPoint, selected_on: str) -> dict[str, Any]:
        key = (chosen.theta, chosen.k)
        if key not in cache:
            cache[key] = _checked_partial(eval_records, scorer, chosen, eval_sweep)
        return {"theta": chosen.theta, "k": chosen.k, "selected_on": selected_on,
                "selection_macro_f1": chosen.macro_f1, "report": cache[key]}

    def protocols(restrict: Sequence[float] | None) -> dict[str, Any]:
        return {
            "paper": point(best_point(eval_sweep, restrict), eval_split),
            "leak_free": point(best_point(select_sweep, restrict), select_split) if select_sweep else None,
        }

    sweeps = {eval_split: eval_sweep.to_json()}
    if select_sweep is not None:
        sweeps[select_split] = select_sweep.to_json()
    return {
        "scorer": scorer,
        "eval_split": eval_split,
        "select_split": select_split if select_sweep is not None else None,
        "max_k": int(max_k),
        **protocols(None),
        "per_theta": {theta_key(t): protocols([t]) for t in eval_sweep.thetas},
        "sweep": sweeps,
    }


def full_protocols(
    eval_records: Sequence[dict[str, Any]],
    select_records: Sequence[dict[str, Any]] | None,
    thresholds: Sequence[float] = THRESHOLDS,
    fixed_theta: float = 0.5,
    eval_split: str = "test",
    select_split: str = "val",
) -> dict[str, Any]:
    """Full detection at every threshold, at a fixed threshold, and at the threshold chosen on validation.

    Args:
        eval_records: records of the reported split. select_records: validation records or None.
        thresholds: thresholds to report. fixed_theta: the conventional operating point (argmax of two classes).
        eval_split, select_split: split names recorded in the result.

    Returns:
        ``{"eval_split", "select_split", "by_threshold": {split: {theta_key: report}},
        "fixed": {"theta", "report"}, "leak_free": {"theta", "selected_on", "selection_macro_f1", "report"} | None}``.
        Leak-free ties go to the smallest theta.

    Raises:
        DataFormatError: empty records or missing ``full_score``.
    """
    grid = sorted({float(t) for t in thresholds} | {float(fixed_theta)})
    by_split = {eval_split: full_detection(eval_records, grid)}
    leak_free = None
    if select_records is not None:
        by_split[select_split] = full_detection(select_records, grid)
        selection = by_split[select_split]
        # Selection only among the requested thresholds (the fixed one is added to the grid for reporting).
        candidates = sorted({float(t) for t in thresholds})
        chosen = min(candidates, key=lambda t: (-round(selection[theta_key(t)]["macro_f1"], _TIE_DECIMALS), t))
        leak_free = {"theta": chosen, "selected_on": select_split,
                     "selection_macro_f1": selection[theta_key(chosen)]["macro_f1"],
                     "report": by_split[eval_split][theta_key(chosen)]}
    return {
        "eval_split": eval_split,
        "select_split": select_split if select_records is not None else None,
        "by_threshold": by_split,
        "fixed": {"theta": float(fixed_theta), "report": by_split[eval_split][theta_key(fixed_theta)]},
        "leak_free": leak_free,
    }


def _split_roles(splits: Sequence[str]) -> tuple[str, str | None]:
    """The reported split (test when scored) and the selection split for leak-free protocols (val), if any."""
    eval_split = "test" if "test" in splits else splits[-1]
    select_split = "val" if "val" in splits and eval_split != "val" else None
    return eval_split, select_split


def evaluate_records(
    records_by_split: dict[str, list[dict[str, Any]]],
    scorers: Sequence[str],
    thresholds: Sequence[float],
    max_k: int = MAX_K,
    fixed_theta: float = 0.5,
) -> dict[str, Any]:
    """Every metric of an evaluation run from its prediction records, per split.

    The reported split is ``test`` when it was scored (else the last split); the leak-free protocols select on
    ``val`` when it was scored too.

    Args:
        records_by_split: prediction records per split name, in the order the splits were scored.
        scorers: per-prefix score names for partial detection (empty for full-only runs).
        thresholds: theta grid. max_k: k grid is 1..max_k. fixed_theta: the fixed full-detection threshold.

    Returns:
        ``{"eval_split", "select_split", "full": full_protocols | None, "full_by_split": {split: {theta: report}},
        "partial": {scorer: partial_protocols}, "token_level": {scorer: {split: {theta: report}}}}``.
    """
    eval_split, select_split = _split_roles(list(records_by_split))
    eval_records = records_by_split[eval_split]
    select_records = records_by_split.get(select_split) if select_split else None
    has_full = all("full_score" in r for records in records_by_split.values() for r in records)
    result: dict[str, Any] = {"eval_split": eval_split, "select_split": select_split, "full": None,
                              "full_by_split": {}, "partial": {}, "token_level": {}}
    if has_full:
        result["full"] = full_protocols(eval_records, select_records, thresholds, fixed_theta, eval_split,
                                        select_split or "val")
        result["full_by_split"] = {split: full_detection(records, thresholds)
                                   for split, records in records_by_split.items()}
    for scorer in scorers:
        result["partial"][scorer] = partial_protocols(eval_records, select_records, scorer, thresholds, max_k,
                                                      eval_split, select_split or "val")
        result["token_level"][scorer] = {split: token_level(records, scorer, thresholds)
                                         for split, records in records_by_split.items()}
    return result
