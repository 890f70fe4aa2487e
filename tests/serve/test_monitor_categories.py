"""Harm categories in the streaming runtime (serve/monitor.py, serve/cuda_step.py, serve/category_policy.py) on tiny
random models, on the CPU.

What must hold: with a category head a stop names the argmax category at the stop token and its category scores are
score x softmax(category logits) of the offline forward; without a head every result is as before; the default
policy stops exactly where the rule alone stops; an annotated category never stops a stream, is recorded and the
rule keeps re-evaluating every later flagged token; a blocked category below its threshold does not stop; the fast
path (static step, graph bookkeeping) gives the eager runtime's categories and decisions; bad policies are refused
with messages that name the fix.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from model import SCMConfig, SCMModel
from serve.category_policy import (CategoryPolicy, azure_filter_results, parse_thresholds, policy_from_flags,
                                   severity, wire_categories, wire_keys)
from serve.cuda_step import FastStep, capture_eagerly
from serve.monitor import StreamingMonitor
from serve.text_guard import TextStreamGuard
from tests.tiny_checkpoints import set_category_bias, steer_categories, tiny_llama_config
from tests.tiny_models import TINY_VOCAB, tiny_qwen2_config
from utils.data.categories import EXTRA_CATEGORIES, OPENAI_CATEGORIES
from utils.decision_rules import ConsecutiveN, DelayK

LABELS = ["hate", "illicit", "self-harm", "privacy"]
PROMPT = [1, 2, 3, 4]
RESPONSE = [(37 * i + 11) % TINY_VOCAB for i in range(40)]


def _model(labels=LABELS, seed: int = 0) -> SCMModel:
    torch.manual_seed(seed)
    return SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), category_labels=labels)).eval()


@pytest.fixture(scope="module")
def model() -> SCMModel:
    return _model()


def _offline(model: SCMModel) -> tuple[list[float], list[list[float]]]:
    """Token scores and category distributions of RESPONSE after PROMPT from one full forward."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([PROMPT + RESPONSE]))
    token = torch.softmax(out.token_logits.float(), -1)[0, len(PROMPT):, 1].tolist()
    categories = torch.softmax(out.category_logits.float(), -1)[0, len(PROMPT):].tolist()
    return token, categories


def _run(monitor: StreamingMonitor, chunks=(1,)):
    """Push RESPONSE in chunks of the given sizes (cycled) until the end or a stop; return the state and results."""
    state = monitor.start(prompt_ids=PROMPT)
    results, at, turn = [], 0, 0
    while at < len(RESPONSE) and not state.stopped:
        size = chunks[turn % len(chunks)]
        results.append(monitor.push(state, RESPONSE[at: at + size]))
        at, turn = at + size, turn + 1
    return state, results


def _theta_with_flags(scores: list[float], wanted: int) -> float:
    """A theta that flags exactly ``wanted`` of ``scores``, far from all of them."""
    ordered = sorted(scores, reverse=True)
    assert ordered[wanted - 1] - ordered[wanted] > 2e-4
    return (ordered[wanted - 1] + ordered[wanted]) / 2


# ------------------------------------------------------------------------------------------- the stop's category


@pytest.mark.parametrize("k, chunks", [(1, (1,)), (3, (1,)), (3, (5, 2)), (7, (40,))])
def test_the_stop_names_the_argmax_category_with_score_times_softmax(model, k, chunks):
    token, categories = _offline(model)
    monitor = StreamingMonitor(model, theta=0.0, rule=DelayK(k))  # every token flagged: stop at index k - 1
    state, results = _run(monitor, chunks)
    stop = state.stop
    assert stop.index == k - 1 and stop.token_id == RESPONSE[k - 1]
    expected = categories[k - 1]
    assert stop.category == LABELS[max(range(len(LABELS)), key=expected.__getitem__)]
    assert list(stop.category_scores) == LABELS
    assert [stop.category_scores[n] for n in LABELS] == pytest.approx([token[k - 1] * p for p in expected], abs=1e-5)
    assert sum(stop.category_scores.values()) == pytest.approx(stop.score, abs=1e-6)
    assert f"category {stop.category} (" in stop.describe()
    # Every pushed token carries its distribution, the offline one.
    streamed = [p for result in results for p in result.category_probs]
    assert len(streamed) == sum(len(r.scores) for r in results)
    for got, want in zip(streamed, categories):
        assert got == pytest.approx(want, abs=1e-5)
    assert state.annotations == [] and all(r.annotations == [] for r in results)


def test_a_model_without_a_head_serves_as_before():
    torch.manual_seed(0)
    plain = SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict())).eval()
    monitor = StreamingMonitor(plain, theta=0.0, rule=DelayK(2))
    assert monitor.category_labels is None and monitor.category_policy is None
    assert monitor.describe() == {"theta": 0.0, "rule": "delay-2", "scorer": "token"}
    state, results = _run(monitor)
    assert (state.stop.index, state.stop.category, state.stop.category_scores) == (1, None, None)
    assert all(r.category_probs is None and r.annotations == [] for r in results)
    assert state.stop.describe() == (f"stopped at response token 1 (id {RESPONSE[1]}): token score "
                                     f"{state.stop.score:.4f} >= theta 0.0, delay-2 count reached 2")
    with pytest.raises(ValueError, match="no category head.*--category-head"):
        monitor.category_policy = CategoryPolicy.block_all(["hate"])
    with pytest.raises(ValueError, match="no category head.*--category-head"):
        StreamingMonitor(plain, category_policy=CategoryPolicy.block_all(["hate"]))


def test_the_default_policy_stops_exactly_where_the_rule_alone_stops(model):
    token, _ = _offline(model)
    theta = _theta_with_flags(token, 12)
    for rule in (DelayK(3), ConsecutiveN(2), DelayK(12)):
        expected = rule.stop_index([s >= theta for s in token])
        monitor = StreamingMonitor(model, theta=theta, rule=rule)
        assert monitor.category_policy == CategoryPolicy.block_all(LABELS)
        state, _ = _run(monitor, (3, 1))
        assert (state.stop.index if state.stop else None) == expected
    assert expected is not None


def test_the_category_head_runs_once_per_step_on_the_new_tokens_only(model):
    shapes = []
    hook = model.category_scorer.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    try:
        monitor = StreamingMonitor(model, theta=1.0, rule=DelayK(10**9))
        states = monitor.start_many(prompt_ids=[PROMPT, PROMPT + [9, 9]])
        for step in range(5):
            monitor.push_many(states, [[step], [step, step + 1]])
    finally:
        hook.remove()
    assert shapes == [(2, 6, len(LABELS))] + [(2, 2, len(LABELS))] * 5  # the prompt step, then (streams, new)


# ------------------------------------------------------------------------------------------- policy


def _hate_then_illicit(model: SCMModel, token: list[float], flagged: list[int], sharpness: float = 20.0) -> float:
    """Steer the head so that the first four flagged tokens are named hate and a later flagged one illicit: tokens
    above the returned boundary are hate, those below illicit."""
    lowest_early = min(token[i] for i in flagged[:4])
    below = [token[i] for i in flagged if token[i] < lowest_early]
    assert any(token[i] < lowest_early for i in flagged[4:]), "no later flagged token below the first four"
    boundary = (lowest_early + max(below)) / 2
    steer_categories(model, "hate", "illicit", boundary, sharpness)
    return boundary


def test_an_annotated_category_never_stops_and_every_later_flagged_token_is_rechecked():
    model = _model()
    token, _ = _offline(model)
    theta = _theta_with_flags(token, 10)
    flagged = [i for i, s in enumerate(token) if s >= theta]
    boundary = _hate_then_illicit(model, token, flagged)
    policy = policy_from_flags(LABELS, annotate="hate")
    assert policy.block == frozenset({"illicit", "self-harm", "privacy"}) and policy.annotate == {"hate"}
    for k in (1, 3):
        monitor = StreamingMonitor(model, theta=theta, rule=DelayK(k), category_policy=policy)
        state, results = _run(monitor, (1, 4))
        # delay-k fires first at the k-th flagged token; from then on every flagged token is re-evaluated.
        firings = flagged[k - 1:]
        stop_at = next(i for i in firings if token[i] < boundary)
        assert state.stop.index == stop_at and state.stop.category == "illicit"
        assert state.stop.count == flagged.index(stop_at) + 1  # the count carried on through the annotations
        annotated = [i for i in firings if i < stop_at]
        assert annotated, "the check is not vacuous"
        assert [a.index for a in state.annotations] == annotated
        assert {a.category for a in state.annotations} == {"hate"} and {a.reason for a in state.annotations} == {
            "annotated"}
        assert [a.index for r in results for a in r.annotations] == annotated
        first = state.annotations[0]
        assert first.token_id == RESPONSE[first.index] and first.score == pytest.approx(token[first.index], abs=1e-5)
        assert first.category_score <= first.score
    # Annotating everything: the stream is never stopped, and every firing is recorded.
    monitor = StreamingMonitor(model, theta=theta, rule=DelayK(1), category_policy=policy_from_flags(
        LABELS, block=""))
    state, _ = _run(monitor)
    assert state.stop is None and [a.index for a in state.annotations] == flagged
    assert state.rule_state.seen == len(RESPONSE)


def test_consecutive_n_keeps_its_run_after_an_annotation():
    model = set_category_bias(_model(), {"hate": 8.0})
    token, _ = _offline(model)
    theta = _theta_with_flags(token, 20)
    flags = [s >= theta for s in token]
    runs, expected = 0, []
    for i, flag in enumerate(flags):
        runs = runs + 1 if flag else 0
        if runs >= 2:
            expected.append(i)  # every flagged token of a run of at least 2
    monitor = StreamingMonitor(model, theta=theta, rule=ConsecutiveN(2),
                               category_policy=policy_from_flags(LABELS, annotate="hate"))
    state, _ = _run(monitor, (2, 3))
    assert state.stop is None and [a.index for a in state.annotations] == expected and expected


def test_a_blocked_category_stops_only_at_its_threshold():
    model = set_category_bias(_model(), {"illicit": 8.0})
    token, categories = _offline(model)
    p = categories[0][LABELS.index("illicit")]
    assert p > 0.99 and all(row[LABELS.index("illicit")] == pytest.approx(p, abs=1e-6) for row in categories)
    cat_scores = [s * p for s in token]
    threshold = _theta_with_flags(cat_scores, 3)
    first = next(i for i, c in enumerate(cat_scores) if c >= threshold)
    assert first > 0
    policy = policy_from_flags(LABELS, thresholds=f"illicit={threshold}")
    monitor = StreamingMonitor(model, theta=0.0, rule=DelayK(1), category_policy=policy)
    state, _ = _run(monitor, (3,))
    assert state.stop.index == first and state.stop.category == "illicit"
    assert state.stop.category_scores["illicit"] >= threshold
    assert [a.index for a in state.annotations] == list(range(first))
    assert {a.reason for a in state.annotations} == {"below_threshold"}
    # A threshold of 0 is the same as none.
    zero = StreamingMonitor(model, theta=0.0, rule=DelayK(1),
                            category_policy=policy_from_flags(LABELS, thresholds="illicit=0"))
    assert _run(zero)[0].stop.index == 0


@pytest.mark.parametrize("fast", ["static", "graph"])
def test_the_fast_path_gives_the_eager_categories_and_decisions(fast):
    model = _model()
    token, _ = _offline(model)
    theta = _theta_with_flags(token, 10)
    flagged = [i for i, s in enumerate(token) if s >= theta]
    _hate_then_illicit(model, token, flagged, sharpness=5.0)
    policy = policy_from_flags(LABELS, annotate="hate")

    def run(fast_path):
        monitor = StreamingMonitor(model, theta=theta, rule=DelayK(2), category_policy=policy, fast_path=fast_path)
        state, results = _run(monitor)
        probs = [p for r in results for p in r.category_probs]
        return state, probs

    eager_state, eager_probs = run("off")
    fast_path = "static" if fast == "static" else FastStep(model, "cuda-graph", capture=capture_eagerly)
    fast_state, fast_probs = run(fast_path)
    assert (fast_state.stop.index, fast_state.stop.category) == (eager_state.stop.index, eager_state.stop.category)
    assert [a.index for a in fast_state.annotations] == [a.index for a in eager_state.annotations]
    assert len(fast_probs) == len(eager_probs)
    for got, want in zip(fast_probs, eager_probs):
        assert got == pytest.approx(want, abs=1e-5)
    if fast == "graph":
        assert fast_path.stats.replays > 0 and fast_path.stats.failure is None


def test_the_text_guard_carries_categories_and_annotations():
    from model.assets import smollm2_path

    smol_tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    config = tiny_llama_config(smol_tokenizer, max_position_embeddings=256)
    model = SCMModel(SCMConfig(backbone_config=config.to_dict(), category_labels=LABELS)).eval()
    set_category_bias(model, {"hate": 6.0})
    monitor = StreamingMonitor(model, smol_tokenizer, theta=0.0, rule=DelayK(2),
                               category_policy=policy_from_flags(LABELS, annotate="hate"))
    guard = TextStreamGuard(monitor, "a prompt")
    update = guard.feed("Some words that the guard will score, ")
    assert update.category_probs is not None and len(update.category_probs) == len(update.token_ids)
    assert [a.index for a in update.annotations] == list(range(1, len(update.token_ids)))
    final = guard.finish()
    assert final.stop is None and not final.stopped
    assert [a.index for a in guard.state.annotations] == list(range(1, guard.state.n_response_tokens))


# ------------------------------------------------------------------------------------------- flags and shapes


def test_policy_flags_and_their_errors():
    assert policy_from_flags(None) is None and policy_from_flags([]) is None
    assert policy_from_flags(LABELS) == CategoryPolicy.block_all(LABELS)
    only_block = policy_from_flags(LABELS, block="illicit,self-harm")
    assert only_block.block == {"illicit", "self-harm"} and only_block.annotate == {"hate", "privacy"}
    both = policy_from_flags(LABELS, block="illicit,self-harm", annotate="hate,privacy", thresholds="illicit=0.6")
    assert both.public() == {"block": ["illicit", "self-harm"], "annotate": ["hate", "privacy"],
                             "thresholds": {"illicit": 0.6}}
    assert policy_from_flags(LABELS, block="all").block == set(LABELS)
    cases = [
        (dict(block="illicit,weapons"), r"--block-categories: unknown category weapons; known: hate, illicit, "
                                        r"self-harm, privacy \(or 'all'\)"),
        (dict(annotate="sexual"), r"--annotate-categories: unknown category sexual; known: hate, illicit"),
        (dict(block="illicit", annotate="illicit,hate"), "both blocked and annotated: illicit"),
        (dict(block="illicit", annotate="hate"), "neither blocked nor annotated: self-harm, privacy"),
        (dict(thresholds="illicit"), "'illicit' is not CATEGORY=SCORE"),
        (dict(thresholds="illicit=high"), "illicit=high: the threshold is not a number"),
        (dict(thresholds="illicit=1.5"), r"a threshold is a category score in \[0, 1\]"),
        (dict(thresholds="weapons=0.5"), "unknown category weapons; known: hate, illicit, self-harm, privacy"),
        (dict(thresholds="illicit=0.5,illicit=0.6"), "illicit is given twice"),
        (dict(annotate="hate", thresholds="hate=0.5"), "hate is annotated, and thresholds apply to blocked"),
    ]
    for flags, message in cases:
        with pytest.raises(ValueError, match=message):
            policy_from_flags(LABELS, **flags)
    with pytest.raises(ValueError, match=r"--block-categories, --category-thresholds: this checkpoint has no "
                                         r"category head .*--category-head"):
        policy_from_flags(None, block="illicit", thresholds="illicit=0.5")
    assert parse_thresholds("illicit/violent=0.25, self-harm=0.3", ["illicit/violent", "self-harm"]) == {
        "illicit/violent": 0.25, "self-harm": 0.3}
    monitor = StreamingMonitor(_model(), rule=DelayK(1))
    with pytest.raises(ValueError, match="the category policy is over"):
        monitor.category_policy = CategoryPolicy.block_all(["hate", "illicit"])


def test_wire_shapes_list_every_openai_key():
    keys = wire_keys(["illicit", "privacy", "weapons"])
    assert keys[:13] == list(OPENAI_CATEGORIES) and keys[13:17] == list(EXTRA_CATEGORIES) and keys[17:] == ["weapons"]
    wire = wire_categories(["illicit", "privacy"], {"illicit": 0.6, "privacy": 0.1}, "illicit", True, 0.7)
    assert list(wire["categories"]) == ["harmful"] + wire_keys(["illicit", "privacy"])
    assert wire["categories"]["illicit"] is True and wire["categories"]["harmful"] is True
    assert sum(wire["categories"].values()) == 2
    assert wire["category_scores"]["harmful"] == 0.7 and wire["category_scores"]["illicit"] == 0.6
    assert wire["category_scores"]["sexual/minors"] == 0.0 and wire["categories"]["hate"] is False
    assert set(map(tuple, wire["category_applied_input_types"].values())) == {("text",)}
    assert wire_categories(None, None, None, False, 0.25) == {
        "categories": {"harmful": False}, "category_scores": {"harmful": 0.25},
        "category_applied_input_types": {"harmful": ["text"]}}
    assert [severity(s) for s in (0.0, 0.2499, 0.25, 0.4999, 0.5, 0.7499, 0.75, 1.0)] == [
        "safe", "safe", "low", "low", "medium", "medium", "high", "high"]
    assert azure_filter_results(["hate", "illicit"], {"illicit": 0.8}, "illicit") == {
        "hate": {"filtered": False, "severity": "safe"}, "illicit": {"filtered": True, "severity": "high"}}
    assert not math.isnan(wire["category_scores"]["other"])
