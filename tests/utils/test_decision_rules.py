"""Decision rules: delay-k (cumulative) and consecutive-n, offline and incremental."""

import pytest

from utils.decision_rules import ConsecutiveN, DelayK, delay_k_stop_index, make_rule

FLAGS = [False, True, False, True, True, False, True]


@pytest.mark.parametrize("k, expected", [(1, 1), (2, 3), (3, 4), (4, 6), (5, None)])
def test_delay_k_counts_cumulatively(k, expected):
    assert DelayK(k).stop_index(FLAGS) == expected


@pytest.mark.parametrize("n, expected", [(1, 1), (2, 4), (3, None)])
def test_consecutive_n_needs_a_run(n, expected):
    assert ConsecutiveN(n).stop_index(FLAGS) == expected


@pytest.mark.parametrize("rule", [DelayK(2), DelayK(4), ConsecutiveN(2)])
@pytest.mark.parametrize("chunks", [[1] * 7, [3, 4], [2, 0, 5], [7]])
def test_incremental_updates_equal_offline(rule, chunks):
    state, start, fired = rule.new_state(), 0, None
    for size in chunks:
        result = rule.update(state, FLAGS[start:start + size])
        start += size
        if result is not None and fired is None:
            fired = result
    assert fired == rule.stop_index(FLAGS)
    assert state.stop_index == fired


def test_a_fired_rule_stays_fired():
    rule = DelayK(1)
    state = rule.new_state()
    assert rule.update(state, [True]) == 0
    assert rule.update(state, [False, False]) == 0 and state.seen == 1


def test_theta_threshold_is_inclusive_and_short_responses_never_fire():
    assert delay_k_stop_index([0.2, 0.5, 0.9], theta=0.5, k=1) == 1
    assert delay_k_stop_index([0.9, 0.9], theta=0.5, k=3) is None
    assert delay_k_stop_index([], theta=0.5, k=1) is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValueError, match="positive integer"):
        DelayK(bad)
    with pytest.raises(ValueError, match="positive integer"):
        ConsecutiveN(bad)


def test_make_rule_by_name():
    assert isinstance(make_rule("delay-k", 3), DelayK) and make_rule("delay-k", 3).k == 3
    assert isinstance(make_rule("consecutive-n", 2), ConsecutiveN)
    with pytest.raises(ValueError, match="unknown decision rule"):
        make_rule("majority", 2)
