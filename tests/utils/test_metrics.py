"""utils/metrics.py on hand-made records: pinned numbers, protocol selection, tie-breaking and delay edge cases."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import precision_recall_fscore_support

from utils.decision_rules import delay_k_stop_index
from utils.io_utils import DataFormatError
from utils.metrics import (
    DELAY_BIN_LABELS,
    Sweep,
    best_point,
    classification_report,
    delay_statistics,
    full_detection,
    full_protocols,
    partial_detection,
    partial_protocols,
    stop_indices,
    sweep_partial,
    token_level,
)


def rec(label, scores=None, full=None, token_labels=None, rid=None):
    """A prediction record; ``scores`` are the token scorer's."""
    scores = scores if scores is not None else []
    record = {"id": rid or f"r{random.random()}", "label": label, "n_response_tokens": len(scores),
              "token_labels": token_labels if token_labels is not None else [0] * len(scores),
              "scores": {"token": scores}}
    if full is not None:
        record["full_score"] = full
    return record


def test_classification_report_pinned():
    report = classification_report([1, 1, 1, 0, 0, 0, 0, 1], [1, 0, 1, 0, 1, 0, 0, 0])
    assert (report["tp"], report["fp"], report["tn"], report["fn"]) == (2, 1, 3, 2)
    assert report["harmful_precision"] == pytest.approx(2 / 3)
    assert report["harmful_recall"] == pytest.approx(0.5)
    assert report["harmful_f1"] == pytest.approx(4 / 7)
    assert report["benign_precision"] == pytest.approx(0.6)
    assert report["benign_recall"] == pytest.approx(0.75)
    assert report["benign_f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(13 / 21)
    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["far"] == pytest.approx(1 / 4) and report["mar"] == pytest.approx(2 / 4)
    assert (report["n"], report["n_harmful"], report["n_benign"]) == (8, 4, 4)


def test_classification_report_matches_sklearn_on_random_inputs():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 30)
        y_true = [rng.randint(0, 1) for _ in range(n)]
        y_pred = [rng.randint(0, 1) for _ in range(n)]
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
        report = classification_report(y_true, y_pred)
        assert [report["benign_precision"], report["harmful_precision"]] == pytest.approx(list(p))
        assert [report["benign_recall"], report["harmful_recall"]] == pytest.approx(list(r))
        assert [report["benign_f1"], report["harmful_f1"]] == pytest.approx(list(f))
        assert report["macro_f1"] == pytest.approx(f.mean())


def test_zero_denominators_give_zero():
    report = classification_report([0, 0, 0], [0, 0, 0])
    assert report["harmful_precision"] == report["harmful_recall"] == report["harmful_f1"] == 0.0
    assert report["benign_f1"] == 1.0 and report["macro_f1"] == 0.5
    assert report["far"] == 0.0 and report["mar"] == 0.0
    empty = classification_report([], [])
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0


def test_classification_report_rejects_bad_input():
    with pytest.raises(ValueError, match="y_true has 2 values but y_pred has 1"):
        classification_report([0, 1], [1])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        classification_report([0, 2], [1, 1])


def test_full_detection_thresholds_are_inclusive():
    records = [rec(1, full=0.95), rec(1, full=0.6), rec(0, full=0.5), rec(0, full=0.49), rec(0, full=0.7)]
    result = full_detection(records, (0.5, 0.6, 0.7, 0.9))
    counts = {key: (r["tp"], r["fp"], r["tn"], r["fn"]) for key, r in result.items()}
    assert counts == {"0.5": (2, 2, 1, 0), "0.6": (2, 1, 2, 0), "0.7": (1, 1, 2, 1), "0.9": (1, 0, 3, 1)}
    # 0.6: harmful F1 = 4/5, benign F1 = 4/5.
    assert result["0.6"]["macro_f1"] == pytest.approx(0.8)
    with pytest.raises(DataFormatError, match="no 'full_score'"):
        full_detection([rec(1, scores=[0.2])])
    with pytest.raises(DataFormatError, match="empty"):
        full_detection([])


def test_token_level_ignores_unlabelled_tokens():
    records = [
        rec(1, scores=[0.9, 0.8, 0.2, 0.99], token_labels=[0, 1, 1, -100]),
        rec(0, scores=[0.7, 0.1], token_labels=[0, -100]),
    ]
    result = token_level(records, "token", (0.5, 0.85))
    # Labelled tokens: (0, .9), (1, .8), (1, .2), (0, .7).
    assert (result["0.5"]["tp"], result["0.5"]["fp"], result["0.5"]["tn"], result["0.5"]["fn"]) == (1, 2, 0, 1)
    assert result["0.5"]["harmful_precision"] == pytest.approx(1 / 3)
    assert result["0.5"]["harmful_f1"] == pytest.approx(2 / 5)
    assert (result["0.85"]["tp"], result["0.85"]["fp"], result["0.85"]["tn"], result["0.85"]["fn"]) == (0, 1, 1, 2)
    assert result["0.85"]["n"] == 4
    with pytest.raises(DataFormatError, match=r"no scores\['holistic'\]"):
        token_level(records, "holistic")


PARTIAL = [
    rec(1, [0.1, 0.6, 0.95, 0.7, 0.2], rid="h1"),
    rec(1, [0.55, 0.52, 0.1], rid="h2"),
    rec(0, [0.2, 0.65, 0.3, 0.1], rid="b1"),
    rec(0, [0.1, 0.1], rid="b2"),
    rec(1, [], rid="h-empty"),  # a zero-length response can never be stopped
]


@pytest.mark.parametrize("theta, k, stops, counts", [
    (0.5, 1, [1, 0, 1, None, None], (2, 1, 1, 1)),
    (0.5, 2, [2, 1, None, None, None], (2, 0, 2, 1)),
    (0.9, 1, [2, None, None, None, None], (1, 0, 2, 2)),
    (0.5, 4, [None] * 5, (0, 0, 2, 3)),  # responses shorter than k (or with fewer flags) are never stopped
])
def test_partial_detection_pinned(theta, k, stops, counts):
    assert stop_indices(PARTIAL, "token", theta, k) == stops
    result = partial_detection(PARTIAL, "token", theta, k)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == counts
    assert (result["theta"], result["k"]) == (theta, k)


def test_partial_delay_statistics_pinned():
    delay = partial_detection(PARTIAL, "token", 0.5, 2)["delay"]
    harmful = delay["harmful"]
    assert (harmful["responses"], harmful["stopped"], harmful["not_stopped"]) == (3, 2, 1)
    # h1 stops at index 2 of 5 (60%), h2 at index 1 of 3 (66.7%).
    assert harmful["mean_share"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert harmful["median_share"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert harmful["histogram"] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert harmful["within_10pct"] == 0.0 and harmful["within_30pct"] == 0.0
    assert harmful["stopped_rate"] == pytest.approx(2 / 3)
    benign = delay["benign"]
    assert (benign["responses"], benign["stopped"], benign["mean_share"], benign["within_10pct"]) == (2, 0, None, None)


def test_delay_bins_have_inclusive_upper_edges():
    records = [{"id": str(i), "label": 1, "n_response_tokens": n} for i, n in enumerate([10, 20, 10, 10, 3, 1, 10])]
    # shares: 1/10 (exactly 10%), 2/20 (10%), 2/10, 3/10 (float trap: 3/10 * 10 > 3), 3/3, 1/1 (the first token
    # of a one-token response); the last record is not stopped.
    stops = [0, 1, 1, 2, 2, 0, None]
    harmful = delay_statistics(records, stops)["harmful"]
    assert harmful["histogram"] == [2, 1, 1, 0, 0, 0, 0, 0, 0, 2]
    assert (harmful["stopped"], harmful["not_stopped"]) == (6, 1)
    assert harmful["within_10pct"] == pytest.approx(2 / 6)
    assert harmful["within_30pct"] == pytest.approx(4 / 6)
    assert harmful["median_share"] == pytest.approx((0.2 + 0.3) / 2)
    assert DELAY_BIN_LABELS[0] == "0-10%" and DELAY_BIN_LABELS[-1] == "90-100%"


def test_stop_at_first_response_token():
    records = [rec(1, [0.9] + [0.0] * 19, rid="a"), rec(1, [0.9], rid="b")]
    delay = partial_detection(records, "token", 0.5, 1)["delay"]["harmful"]
    assert delay["histogram"][0] == 1 and delay["histogram"][9] == 1
    assert delay["mean_share"] == pytest.approx((1 / 20 + 1) / 2)


def test_nothing_stopped_and_bad_stops():
    records = [rec(1, [0.1, 0.2], rid="a"), rec(0, [], rid="b")]
    delay = delay_statistics(records, [None, None])
    assert delay["harmful"]["histogram"] == [0] * 10 and delay["harmful"]["mean_share"] is None
    assert delay["harmful"]["median_share"] is None and delay["harmful"]["within_30pct"] is None
    with pytest.raises(ValueError, match="outside its 0 response tokens"):
        delay_statistics(records, [None, 0])
    with pytest.raises(ValueError, match="1 stop indices for 2 records"):
        delay_statistics(records, [None])


def test_sweep_equals_the_shared_rule_everywhere():
    rng = random.Random(3)
    records = [rec(rng.randint(0, 1), [round(rng.random(), 6) for _ in range(rng.randint(0, 15))], rid=str(i))
               for i in range(40)]
    thetas = (0.3, 0.5, 0.75)
    sweep = sweep_partial(records, "token", thetas, max_k=8)
    for theta in thetas:
        for k in range(1, 9):
            expected = partial_detection(records, "token", theta, k)["macro_f1"]
            assert sweep.macro_f1[theta][k - 1] == pytest.approx(expected, abs=1e-12)
            # and the rule itself is the shared one
            assert stop_indices(records, "token", theta, k) == [
                delay_k_stop_index(r["scores"]["token"], theta, k) for r in records]


def test_best_point_tie_breaking():
    sweep = Sweep((0.5, 0.6), 3, {0.5: [0.5, 0.8, 0.8], 0.6: [0.8, 0.1, 0.1]})
    point = best_point(sweep)
    assert (point.theta, point.k, point.macro_f1) == (0.6, 1, 0.8)  # smallest k first
    sweep = Sweep((0.5, 0.6), 2, {0.5: [0.2, 0.1 + 0.2], 0.6: [0.2, 0.3]})
    assert (best_point(sweep).theta, best_point(sweep).k) == (0.5, 2)  # then smallest theta; 0.1+0.2 ties 0.3
    assert best_point(sweep, [0.6]).theta == 0.6
    with pytest.raises(ValueError, match="none of the thresholds"):
        best_point(sweep, [0.9])


# Test split: only (0.8, k=1) separates the classes perfectly. Validation: only (0.5, k=2) does.
TEST_SPLIT = [rec(1, [0.9], rid="t-h1"), rec(1, [0.9, 0.6], rid="t-h2"), rec(0, [0.6, 0.6], rid="t-b1"),
              rec(0, [0.1], rid="t-b2")]
VAL_SPLIT = [rec(1, [0.6, 0.6], rid="v-h1"), rec(1, [0.7, 0.55, 0.1], rid="v-h2"), rec(0, [0.9], rid="v-b1"),
             rec(0, [0.2], rid="v-b2")]


def test_protocols_pick_different_points():
    result = partial_protocols(TEST_SPLIT, VAL_SPLIT, "token", (0.5, 0.8), max_k=3)
    paper, free = result["paper"], result["leak_free"]
    assert (paper["theta"], paper["k"], paper["selected_on"]) == (0.8, 1, "test")
    assert paper["report"]["macro_f1"] == 1.0
    assert (free["theta"], free["k"], free["selected_on"]) == (0.5, 2, "val")
    assert free["selection_macro_f1"] == 1.0
    # On test, (0.5, 2) flags t-h2 and t-b1: tp = fp = tn = fn = 1.
    assert free["report"]["macro_f1"] == pytest.approx(0.5)
    # Per theta (the paper code's "best k per theta"): theta 0.5 on test -> k = 1 (macro-F1 (4/5 + 2/3) / 2).
    assert result["per_theta"]["0.5"]["paper"]["k"] == 1
    assert result["per_theta"]["0.5"]["paper"]["report"]["macro_f1"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    # On val, theta 0.8 flags only v-b1: k = 1 scores 0.2, k = 2 and 3 flag nothing (1/3 each): the tie -> k = 2.
    assert result["per_theta"]["0.8"]["leak_free"]["k"] == 2
    assert result["per_theta"]["0.8"]["leak_free"]["selection_macro_f1"] == pytest.approx(1 / 3)
    assert result["sweep"]["test"]["0.5"] == pytest.approx([(4 / 5 + 2 / 3) / 2, 0.5, 1 / 3])
    assert set(result["sweep"]) == {"test", "val"}


def test_protocols_without_validation():
    result = partial_protocols(TEST_SPLIT, None, "token", (0.5, 0.8), max_k=3)
    assert result["leak_free"] is None and result["select_split"] is None
    assert result["per_theta"]["0.8"]["leak_free"] is None


def test_full_protocols_leak_free_threshold_from_validation():
    test = [rec(1, full=0.7, rid="a"), rec(0, full=0.55, rid="b"), rec(1, full=0.95, rid="c")]
    val = [rec(1, full=0.65, rid="d"), rec(0, full=0.55, rid="e")]
    result = full_protocols(test, val, (0.5, 0.6, 0.7))
    assert result["fixed"]["theta"] == 0.5 and result["fixed"]["report"]["fp"] == 1
    # On val only 0.6 separates d from e; on test it is perfect too.
    assert result["leak_free"]["theta"] == 0.6 and result["leak_free"]["selected_on"] == "val"
    assert result["leak_free"]["report"]["macro_f1"] == 1.0
    assert result["by_threshold"]["val"]["0.5"]["macro_f1"] == pytest.approx(1 / 3)
    # Ties go to the smallest theta: every threshold gives 1/3 on this validation set.
    tied = full_protocols(test, [rec(1, full=0.65, rid="d"), rec(0, full=0.6, rid="e")], (0.5, 0.6, 0.7))
    assert tied["leak_free"]["theta"] == 0.5
    assert full_protocols(test, None, (0.5,))["leak_free"] is None
    # The fixed 0.5 is reported even when not requested, but the leak-free choice stays among the requested ones.
    # On this validation set 0.5 scores 1/3 like 0.7 and 0.9; were it a candidate, the tie would pick it.
    only_high = full_protocols(test, [rec(1, full=0.65, rid="d"), rec(0, full=0.6, rid="e")], (0.7, 0.9))
    assert only_high["fixed"]["theta"] == 0.5 and "0.5" in only_high["by_threshold"]["test"]
    assert only_high["leak_free"]["theta"] == 0.7
