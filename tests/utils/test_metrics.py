"""utils/metrics.py on hand-made records: pinned numbers, the three selection protocols (the paper's k per threshold
by harmful F1 with -100 tokens masked, leak-free max macro-F1, leak-free earliest within a tolerance), tie-breaking,
the frontier and delay edge cases."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import precision_recall_fscore_support

from utils.decision_rules import delay_k_stop_index
from utils.io_utils import DataFormatError
from utils.metrics import (
    DELAY_BIN_LABELS,
    PROTOCOLS,
    MAX_BENIGN_STOP_RATE,
    Sweep,
    best_point,
    best_within_budget,
    budget_shortfall,
    classification_report,
    delay_statistics,
    earliest_within,
    evaluate_records,
    full_detection,
    full_protocols,
    paper_point,
    pareto_frontier,
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
    # The empty harmful response cannot be read, so it is left out of the mean over all responses too.
    assert harmful["mean_share_all"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    late = partial_detection(PARTIAL, "token", 0.9, 1)["delay"]["harmful"]
    # theta 0.9: h1 stops at 3/5, h2 is never stopped and counts as fully read.
    assert late["mean_share"] == pytest.approx(3 / 5) and late["mean_share_all"] == pytest.approx((3 / 5 + 1) / 2)
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
    assert delay["harmful"]["mean_share_all"] == 1.0 and delay["benign"]["mean_share_all"] is None
    with pytest.raises(ValueError, match="outside its 0 response tokens"):
        delay_statistics(records, [None, 0])
    with pytest.raises(ValueError, match="1 stop indices for 2 records"):
        delay_statistics(records, [None])


@pytest.mark.parametrize("counting", ["all", "labelled"])
def test_sweep_equals_the_shared_rule_everywhere(counting):
    rng = random.Random(3)
    records = []
    for i in range(40):
        n = rng.randint(0, 15)
        records.append(rec(rng.randint(0, 1), [round(rng.random(), 6) for _ in range(n)], rid=str(i),
                           token_labels=[rng.choice([-100, 0, 1, 1]) for _ in range(n)]))
    thetas = (0.3, 0.5, 0.75)
    sweep = sweep_partial(records, "token", thetas, max_k=8, counting=counting)
    assert sweep.counting == counting
    for theta in thetas:
        for k in range(1, 9):
            expected = partial_detection(records, "token", theta, k, counting)
            assert sweep.macro_f1[theta][k - 1] == pytest.approx(expected["macro_f1"], abs=1e-12)
            assert sweep.harmful_f1[theta][k - 1] == pytest.approx(expected["harmful_f1"], abs=1e-12)
            assert sweep.mean_share_all[theta][k - 1] == pytest.approx(
                expected["delay"]["harmful"]["mean_share_all"], abs=1e-12)
            assert sweep.harmful_recall[theta][k - 1] == pytest.approx(expected["harmful_recall"], abs=1e-12)
            assert sweep.benign_stop_rate[theta][k - 1] == pytest.approx(
                expected["delay"]["benign"]["stopped_rate"], abs=1e-12)
            # and the rule itself is the shared one, on the tokens that count
            assert stop_indices(records, "token", theta, k, counting) == [
                delay_k_stop_index([s if counting == "all" or label != -100 else 0.0
                                    for s, label in zip(r["scores"]["token"], r["token_labels"])], theta, k)
                for r in records]


def grid(macro_f1, harmful_f1=None, shares=None, counting="all"):
    """A hand-made Sweep over the thresholds of ``macro_f1`` (``{theta: [value for k = 1..]}``)."""
    thetas = tuple(macro_f1)
    max_k = len(next(iter(macro_f1.values())))
    return Sweep(thetas, max_k, counting, macro_f1, harmful_f1 or {t: [0.0] * max_k for t in thetas},
                 shares or {t: [None] * max_k for t in thetas})


def test_best_point_tie_breaking():
    point = best_point(grid({0.5: [0.5, 0.8, 0.8], 0.6: [0.8, 0.1, 0.1]}))
    assert (point.theta, point.k, point.score, point.metric) == (0.6, 1, 0.8, "macro_f1")  # smallest k first
    sweep = grid({0.5: [0.2, 0.1 + 0.2], 0.6: [0.2, 0.3]})
    assert (best_point(sweep).theta, best_point(sweep).k) == (0.5, 2)  # then smallest theta; 0.1+0.2 ties 0.3
    assert best_point(sweep, [0.6]).theta == 0.6
    with pytest.raises(ValueError, match="none of the thresholds"):
        best_point(sweep, [0.9])


TOLERANCE_GRID = {0.5: [0.70, 0.80, 0.895, 0.90], 0.6: [0.60, 0.891, 0.89, 0.85]}


@pytest.mark.parametrize("tolerance, expected", [
    (0.0, (0.5, 4)),     # no tolerance: the max-F1 point
    (0.005, (0.5, 3)),   # 0.895 lies exactly on the boundary 0.90 - 0.005 and is in
    (0.01, (0.6, 2)),    # 0.891 and 0.89 (boundary) qualify too; the smallest k wins
    (0.3, (0.5, 1)),     # 0.70 and 0.60 both qualify at k = 1: then the smallest theta
])
def test_earliest_within_tolerance(tolerance, expected):
    point = earliest_within(grid(TOLERANCE_GRID), tolerance)
    assert (point.theta, point.k) == expected
    assert point.score == TOLERANCE_GRID[expected[0]][expected[1] - 1] and point.metric == "macro_f1"


def test_earliest_within_zero_tolerance_is_the_max_f1_rule():
    rng = random.Random(5)
    for _ in range(30):
        # Coarse values make ties frequent, so the tie rules of both are exercised.
        macro = {t: [rng.choice([0.5, 0.6, 0.7]) for _ in range(6)] for t in (0.5, 0.7, 0.9)}
        assert earliest_within(grid(macro), 0.0) == best_point(grid(macro))
    with pytest.raises(ValueError, match=r"selection tolerance must be in \[0, 1\]"):
        earliest_within(grid(TOLERANCE_GRID), -0.01)


# theta 0.5, harmful F1 by k (from flagged counts h1 3, h2 1, b1 2, b2 0, b3 1): k=1 2/3, k=2 1/2, k=3 2/3, k=4 0;
# macro-F1: k=1 7/12, k=2 7/12, k=3 16/21, k=4 3/8 (benign 3/4 with nothing flagged, harmful 0).
PAPER_TIE = [rec(1, [0.9, 0.9, 0.9], rid="h1"), rec(1, [0.9, 0.1, 0.1], rid="h2"), rec(0, [0.9, 0.9, 0.1], rid="b1"),
             rec(0, [0.1], rid="b2"), rec(0, [0.9], rid="b3")]


def test_paper_point_is_the_first_k_with_the_best_harmful_f1():
    sweep = sweep_partial(PAPER_TIE, "token", (0.5, 0.95), max_k=4, counting="labelled")
    assert sweep.harmful_f1[0.5] == pytest.approx([2 / 3, 1 / 2, 2 / 3, 0.0])
    assert sweep.macro_f1[0.5] == pytest.approx([7 / 12, 7 / 12, 16 / 21, 3 / 8])
    point = paper_point(sweep, 0.5)
    # k = 1 and k = 3 tie on harmful F1: the first wins, although k = 3 has the better macro-F1.
    assert (point.theta, point.k, point.metric) == (0.5, 1, "harmful_f1")
    assert point.score == pytest.approx(2 / 3)
    assert best_point(sweep, [0.5]).k == 3
    # theta 0.95 flags nothing: harmful F1 is 0 for every k (the paper's code reports k = 0); the first k is kept.
    nothing = paper_point(sweep, 0.95)
    assert (nothing.k, nothing.score) == (1, 0.0)


# -100 tokens with high scores: mh1 flags at 0, 1, 2, 4 when every token counts, at 1 and 4 when only labelled ones
# do; mb1's only high score is on an unlabelled token.
MASKED = [rec(1, [0.9, 0.8, 0.9, 0.1, 0.7], token_labels=[-100, 1, -100, 0, 1], rid="mh1"),
          rec(0, [0.95, 0.1], token_labels=[-100, 0], rid="mb1")]


def test_unlabelled_tokens_never_count_under_labelled_counting():
    assert stop_indices(MASKED, "token", 0.5, 1, "all") == [0, 0]
    assert stop_indices(MASKED, "token", 0.5, 1, "labelled") == [1, None]
    assert stop_indices(MASKED, "token", 0.5, 2, "all") == [1, None]
    assert stop_indices(MASKED, "token", 0.5, 2, "labelled") == [4, None]
    everything = partial_detection(MASKED, "token", 0.5, 1, "all")
    labelled = partial_detection(MASKED, "token", 0.5, 1, "labelled")
    assert (everything["tp"], everything["fp"], everything["macro_f1"]) == (1, 1, pytest.approx(1 / 3))
    assert (labelled["tp"], labelled["fp"], labelled["macro_f1"], labelled["counting"]) == (1, 0, 1.0, "labelled")
    # "Seen" counts every response token read, unlabelled ones included: mh1 stops at its 2nd of 5 tokens.
    assert labelled["delay"]["harmful"]["mean_share"] == pytest.approx(2 / 5)
    assert everything["delay"]["harmful"]["mean_share"] == pytest.approx(1 / 5)
    assert partial_detection(MASKED, "token", 0.5, 2, "labelled")["delay"]["harmful"]["histogram"][9] == 1
    with pytest.raises(DataFormatError, match="has no 'token_labels': the paper protocol"):
        stop_indices([{"id": "x", "label": 1, "n_response_tokens": 1, "scores": {"token": [0.9]}}], "token", 0.5, 1,
                     "labelled")
    with pytest.raises(ValueError, match="counting must be one of all, labelled"):
        stop_indices(MASKED, "token", 0.5, 1, "some")


def test_masking_applies_to_the_paper_protocol_only():
    val = [rec(1, [0.9], token_labels=[-100], rid="v1"), rec(0, [0.1], rid="v2")]
    result = partial_protocols(MASKED, val, "token", (0.5,), max_k=2)
    paper = result["paper"]["0.5"]
    assert (paper["k"], paper["counting"], paper["selected_on"], paper["protocol"]) == (1, "labelled", "test", "paper")
    assert paper["report"]["macro_f1"] == 1.0 and paper["selection_score"] == 1.0
    # Validation: v1's only flag is unlabelled, yet the leak-free rule counts it (a deployed monitor has no labels):
    # (0.5, 1) separates val perfectly; on test it also stops mb1 through its unlabelled token.
    free = result["leak_free"]
    assert (free["theta"], free["k"], free["counting"], free["selection_score"]) == (0.5, 1, "all", 1.0)
    assert free["report"]["macro_f1"] == pytest.approx(1 / 3)
    assert result["sweep"]["test"]["macro_f1"]["0.5"] == pytest.approx([1 / 3, 1.0])
    assert result["paper_sweep"]["macro_f1"]["0.5"] == pytest.approx([1.0, 1.0])
    assert result["paper_sweep"]["counting"] == "labelled" and result["sweep"]["val"]["counting"] == "all"


def test_pareto_frontier_pinned():
    sweep = grid({0.5: [0.6, 0.8, 0.7], 0.6: [0.65, 0.8, 0.9]},
                 shares={0.5: [0.1, 0.3, 0.5], 0.6: [0.1, 0.2, 0.6]})
    front = pareto_frontier(sweep)
    # (0.5, k=2) ties (0.6, k=2) on F1 but needs a larger share; (0.5, k=3) is beaten by (0.6, k=2).
    assert [(p["theta"], p["k"], p["mean_share_all"], p["macro_f1"]) for p in front] == [
        (0.6, 1, 0.1, 0.65), (0.6, 2, 0.2, 0.8), (0.6, 3, 0.6, 0.9)]
    assert pareto_frontier(grid({0.5: [0.6, 0.7]})) == []  # no harmful response with tokens: no share axis


def test_frontier_from_records():
    result = partial_protocols(PARTIAL, None, "token", (0.5, 0.9), max_k=2)
    grid_json = result["sweep"]["test"]
    # theta 0.5: k=1 stops h1 at 2/5 and h2 at 1/3; k=2 at 3/5 and 2/3. theta 0.9: k=1 stops h1 at 3/5, h2 missed.
    assert grid_json["mean_share_all"]["0.5"] == pytest.approx([(2 / 5 + 1 / 3) / 2, (3 / 5 + 2 / 3) / 2])
    assert grid_json["mean_share_all"]["0.9"] == pytest.approx([(3 / 5 + 1) / 2, 1.0])
    # macro-F1: (0.5, 1) 7/12 (tp 2, fp 1, tn 1, fn 1), (0.5, 2) 4/5, (0.9, 1) 7/12, (0.9, 2) 2/7 (benign 4/7).
    assert grid_json["macro_f1"]["0.5"] == pytest.approx([7 / 12, 4 / 5])
    assert grid_json["macro_f1"]["0.9"] == pytest.approx([7 / 12, 2 / 7])
    assert [(p["theta"], p["k"]) for p in result["frontier"]["test"]] == [(0.5, 1), (0.5, 2)]


# Test split: only (0.8, k=1) separates the classes perfectly. Validation: only (0.5, k=2) does.
TEST_SPLIT = [rec(1, [0.9], rid="t-h1"), rec(1, [0.9, 0.6], rid="t-h2"), rec(0, [0.6, 0.6], rid="t-b1"),
              rec(0, [0.1], rid="t-b2")]
VAL_SPLIT = [rec(1, [0.6, 0.6], rid="v-h1"), rec(1, [0.7, 0.55, 0.1], rid="v-h2"), rec(0, [0.9], rid="v-b1"),
             rec(0, [0.2], rid="v-b2")]


def test_protocols_pick_different_points():
    result = partial_protocols(TEST_SPLIT, VAL_SPLIT, "token", (0.5, 0.8), max_k=3)
    # Paper: one point per threshold, k by harmful F1 on test. theta 0.5: counts h1 1, h2 2, b1 2, b2 0 -> k = 1
    # (harmful F1 4/5; macro-F1 (4/5 + 2/3) / 2). theta 0.8: only the harmful ones are flagged -> k = 1, perfect.
    paper = result["paper"]
    assert set(paper) == {"0.5", "0.8"}
    assert (paper["0.5"]["k"], paper["0.5"]["selection_metric"]) == (1, "harmful_f1")
    assert paper["0.5"]["selection_score"] == pytest.approx(4 / 5)
    assert paper["0.5"]["report"]["macro_f1"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert (paper["0.8"]["k"], paper["0.8"]["report"]["macro_f1"]) == (1, 1.0)
    free, early = result["leak_free"], result["leak_free_early"]
    assert (free["theta"], free["k"], free["selected_on"], free["protocol"]) == (0.5, 2, "val", "leak_free")
    assert free["selection_score"] == 1.0
    # On test, (0.5, 2) flags t-h2 and t-b1: tp = fp = tn = fn = 1.
    assert free["report"]["macro_f1"] == pytest.approx(0.5)
    # Only (0.5, 2) is perfect on validation and nothing is within one point of it: the early rule agrees.
    assert (early["theta"], early["k"], early["protocol"]) == (0.5, 2, "leak_free_early")
    assert result["selection_tolerance"] == 0.01
    # Per theta on val: theta 0.8 flags only v-b1: k = 1 scores 0.2, k = 2 and 3 flag nothing (1/3 each): k = 2.
    assert result["leak_free_per_theta"]["0.8"]["k"] == 2
    assert result["leak_free_per_theta"]["0.8"]["selection_score"] == pytest.approx(1 / 3)
    assert result["sweep"]["test"]["macro_f1"]["0.5"] == pytest.approx([(4 / 5 + 2 / 3) / 2, 0.5, 1 / 3])
    assert set(result["sweep"]) == {"test", "val"} and set(result["frontier"]) == {"test", "val"}
    # On validation (0.5, 1) scores 11/15 (harmful F1 4/5, benign 2/3): 0.3 points of tolerance admit it, 0.25 not.
    wide = partial_protocols(TEST_SPLIT, VAL_SPLIT, "token", (0.5, 0.8), max_k=3, tolerance=0.3)
    assert (wide["leak_free_early"]["theta"], wide["leak_free_early"]["k"]) == (0.5, 1)
    assert wide["leak_free_early"]["selection_score"] == pytest.approx(11 / 15)
    assert wide["leak_free"] == result["leak_free"]  # the max-F1 point does not depend on the tolerance
    narrow = partial_protocols(TEST_SPLIT, VAL_SPLIT, "token", (0.5, 0.8), max_k=3, tolerance=0.25)
    assert (narrow["leak_free_early"]["theta"], narrow["leak_free_early"]["k"]) == (0.5, 2)


def test_protocols_without_validation():
    result = partial_protocols(TEST_SPLIT, None, "token", (0.5, 0.8), max_k=3)
    assert result["leak_free"] is None and result["leak_free_early"] is None and result["select_split"] is None
    assert result["leak_free_budget"] is None and "no val split was scored" in result["leak_free_budget_reason"]
    assert result["leak_free_per_theta"] is None and set(result["paper"]) == {"0.5", "0.8"}


def test_evaluate_records_names_its_protocols():
    result = evaluate_records({"val": VAL_SPLIT, "test": TEST_SPLIT}, ["token"], (0.5, 0.8), max_k=3, tolerance=0.02)
    assert set(result["protocols"]) == set(PROTOCOLS) and "harmful-class F1" in result["protocols"]["paper"]
    assert result["partial"]["token"]["selection_tolerance"] == 0.02
    assert (result["eval_split"], result["select_split"]) == ("test", "val")


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


# ------------------------------------------------------------------------------------------- false-stop budget


def budget_grid(macro_f1, rates, shares=None):
    """A hand-made Sweep with benign stop rates (``{theta: [rate for k = 1..]}``)."""
    sweep = grid(macro_f1, shares=shares)
    sweep.benign_stop_rate = rates
    return sweep


# k = 1..3 per theta; a lower threshold or k stops more benign responses and catches more harmful ones.
BUDGET_F1 = {0.5: [0.90, 0.85, 0.80], 0.8: [0.88, 0.84, 0.70]}
BUDGET_RATES = {0.5: [0.10, 0.03, 0.02], 0.8: [0.05, 0.02, 0.01]}


@pytest.mark.parametrize("budget, expected", [
    (0.10, (0.5, 1)),   # everything qualifies: the max-F1 point
    (0.05, (0.8, 1)),   # (0.5, 1) stops 10% of benign responses: out; 0.88 is the best of the rest
    (0.03, (0.5, 2)),   # the boundary is in: (0.5, 2) stops exactly 3%
    (0.02, (0.8, 2)),   # (0.5, 3) at 2% scores 0.80 < (0.8, 2)'s 0.84
    (0.01, (0.8, 3)),   # only one point stops at most 1%, however poor its F1
])
def test_budget_rule_picks_the_best_macro_f1_within_the_budget(budget, expected):
    point = best_within_budget(budget_grid(BUDGET_F1, BUDGET_RATES), budget)
    assert (point.theta, point.k, point.metric) == (*expected, "macro_f1")
    assert point.score == BUDGET_F1[expected[0]][expected[1] - 1]


def test_budget_rule_reports_none_when_nothing_qualifies():
    sweep = budget_grid(BUDGET_F1, BUDGET_RATES)
    assert best_within_budget(sweep, 0.005) is None
    assert budget_shortfall(sweep, 0.005) == (
        "no (theta, k) of the grid stops at most 0.5% of the benign val responses (the fewest: 1.00% at theta 0.8, "
        "k 3); raise --max-benign-stop-rate, or widen the grid (--thresholds up to 0.99, a larger --max-k)")
    assert MAX_BENIGN_STOP_RATE == 0.02 and best_within_budget(sweep) == best_within_budget(sweep, 0.02)
    with pytest.raises(ValueError, match=r"a share in \[0, 1\] \(0.02 = 2%"):
        best_within_budget(sweep, 2)
    with pytest.raises(ValueError, match="holds no benign stop rates"):
        best_within_budget(grid(BUDGET_F1), 0.02)


def test_budget_rule_ties_go_to_the_earliest_stop_then_k_then_theta():
    f1 = {0.5: [0.8, 0.8, 0.1 + 0.2], 0.8: [0.8, 0.8, 0.3]}
    rates = {0.5: [0.0, 0.0, 0.1 + 0.2], 0.8: [0.0, 0.0, 0.0]}
    # Equal macro-F1 everywhere that counts: the smallest share seen wins, whatever k and theta.
    shares = {0.5: [0.6, 0.5, 0.4], 0.8: [0.7, 0.3, 0.9]}
    point = best_within_budget(budget_grid(f1, rates, shares), 0.0)
    assert (point.theta, point.k) == (0.8, 2)
    # Equal shares: then the smallest k, then the smallest theta (the other rules' ties).
    same = {0.5: [0.5, 0.5, 0.5], 0.8: [0.5, 0.5, 0.5]}
    assert (best_within_budget(budget_grid(f1, rates, same), 0.0).theta,
            best_within_budget(budget_grid(f1, rates, same), 0.0).k) == (0.5, 1)
    # No share anywhere (no harmful response with tokens): (0.5, 2) and (0.8, 1) tie; the smaller k wins.
    point = best_within_budget(budget_grid({0.5: [0.7, 0.8], 0.8: [0.8, 0.1]}, {0.5: [0.0, 0.0], 0.8: [0.0, 0.0]}),
                               0.0)
    assert (point.theta, point.k) == (0.8, 1)
    # Rates and scores are compared rounded: 0.1 + 0.2 is within a 0.3 budget and ties 0.3 on F1.
    high = {0.5: [0.9, 0.9, 0.1 + 0.2], 0.8: [0.9, 0.9, 0.3]}
    point = best_within_budget(budget_grid({0.5: [0.1, 0.1, 0.3], 0.8: [0.1, 0.1, 0.1 + 0.2]}, high,
                                           {0.5: [0.5] * 3, 0.8: [0.5] * 3}), 0.3)
    assert (point.theta, point.k) == (0.5, 3)


def test_budget_protocol_from_records():
    # Validation, theta 0.5: k = 1 also stops v-b1 (benign stop rate 1/2); k = 2 stops both harmful responses and
    # no benign one (perfect); theta 0.8 stops only v-b1 at k = 1.
    result = partial_protocols(TEST_SPLIT, VAL_SPLIT, "token", (0.5, 0.8), max_k=3)
    assert result["max_benign_stop_rate"] == 0.02 and result["leak_free_budget_reason"] is None
    assert result["sweep"]["val"]["benign_stop_rate"]["0.5"] == [0.5, 0.0, 0.0]
    assert result["sweep"]["val"]["harmful_recall"]["0.5"] == [1.0, 1.0, 0.0]
    budget = result["leak_free_budget"]
    assert (budget["theta"], budget["k"], budget["protocol"], budget["selected_on"]) == (0.5, 2, "leak_free_budget",
                                                                                         "val")
    assert budget["max_benign_stop_rate"] == 0.02 and budget["selection_score"] == 1.0
    # On validation: v-h1 stops at its 2nd of 2 tokens, v-h2 at its 2nd of 3.
    assert budget["selection_report"] == {
        "macro_f1": 1.0, "harmful_recall": 1.0, "harmful_precision": 1.0, "benign_stop_rate": 0.0,
        "mean_share": pytest.approx((1 + 2 / 3) / 2), "mean_share_all": pytest.approx((1 + 2 / 3) / 2),
        "n_harmful": 2, "n_benign": 2}
    # On test it stops t-h2 and t-b1: the reported benign stop rate and harmful recall are both 1/2.
    assert (budget["report"]["far"], budget["report"]["harmful_recall"]) == (0.5, 0.5)
    assert result["leak_free"]["selection_report"] == budget["selection_report"]
    # A budget of 40% with k = 1 only: every point stops half the benign responses.
    tight = partial_protocols(TEST_SPLIT, VAL_SPLIT, "token", (0.5, 0.8), max_k=1, max_benign_stop_rate=0.4)
    assert tight["leak_free_budget"] is None and tight["leak_free"] is not None
    assert tight["leak_free_budget_reason"].startswith("no (theta, k) of the grid stops at most 40% of the benign val "
                                                       "responses (the fewest: 50.00% at theta 0.5, k 1)")
    with pytest.raises(ValueError, match="benign stop rate budget"):
        partial_protocols(TEST_SPLIT, VAL_SPLIT, "token", (0.5,), max_k=1, max_benign_stop_rate=-0.1)
    assert "leak_free_budget" in PROTOCOLS
