"""The streaming runtime (serve/monitor.py, serve/kv_slab.py) on tiny random models.

What must hold: streamed scores equal one full offline forward (token by token, in random chunks, many streams
batched), the stop position equals the offline rule's, streams never influence each other, the past is never
recomputed or copied on a step, KV memory stays proportional to what the open streams hold, and every misuse is a
clear exception that changes nothing. The generate() integration is tested in test_generate.py.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from model import SCMConfig, SCMModel
from serve.monitor import (InvalidTokenError, StreamClosedError, StreamingMonitor, StreamLengthError,
                           StreamStoppedError, encode_prompt, score_offline)
from tests.tiny_checkpoints import build_tiny_scm
from utils.decision_rules import ConsecutiveN, DelayK

from tests.tiny_models import TINY_VOCAB, tiny_qwen2_config

FP32_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_model() -> SCMModel:
    torch.manual_seed(0)
    return SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict())).eval()


def _ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(TINY_VOCAB) for _ in range(n)]


def _offline(model, prompt: list[int], response: list[int]) -> tuple[list[float], list[float]]:
    token, holistic = score_offline(model, torch.tensor([prompt + response]))
    return token[0, len(prompt):].tolist(), holistic[0, len(prompt):].tolist()


def _never_stopping(model, **kwargs) -> StreamingMonitor:
    return StreamingMonitor(model, rule=DelayK(10**9), **kwargs)


# ------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_token_by_token_equals_one_offline_forward(tiny_model, attn):
    monitor = _never_stopping(tiny_model, attn_implementation=attn)
    prompt, response = _ids(1, 7), _ids(2, 40)
    state = monitor.start(prompt_ids=prompt)
    token, holistic = [], []
    for token_id in response:
        result = monitor.push(state, [token_id])
        token += result.token_scores
        holistic += result.holistic_scores
    offline_token, offline_holistic = _offline(tiny_model, prompt, response)
    torch.testing.assert_close(torch.tensor(token), torch.tensor(offline_token), atol=FP32_TOLERANCE, rtol=0)
    torch.testing.assert_close(torch.tensor(holistic), torch.tensor(offline_holistic), atol=FP32_TOLERANCE, rtol=0)
    assert state.length == 47 and state.n_response_tokens == 40
    tiny_model.set_attn_implementation("sdpa")


def test_batched_streams_in_random_chunks_equal_offline(tiny_model):
    monitor = _never_stopping(tiny_model)
    rng = random.Random(3)
    prompts = [_ids(10 + i, rng.randint(1, 20)) for i in range(5)]
    responses = [_ids(20 + i, rng.randint(5, 50)) for i in range(5)]
    states = monitor.start_many(prompt_ids=prompts)
    streamed = [[] for _ in states]
    done = [0] * len(states)
    while any(d < len(r) for d, r in zip(done, responses)):
        chosen = [i for i in range(len(states)) if rng.random() < 0.7]  # the others sit idle in this push
        chunks = []
        for i in chosen:
            size = rng.randint(0, 9)
            chunks.append(responses[i][done[i]: done[i] + size])
            done[i] += len(chunks[-1])
        for i, result in zip(chosen, monitor.push_many([states[i] for i in chosen], chunks)):
            streamed[i] += result.scores
    for prompt, response, scores in zip(prompts, responses, streamed):
        expected, _ = _offline(tiny_model, prompt, response)
        assert len(scores) == len(response)
        assert max(abs(a - b) for a, b in zip(scores, expected)) <= FP32_TOLERANCE


def test_holistic_scorer_is_the_holistic_head_at_every_position(tiny_model):
    monitor = StreamingMonitor(tiny_model, scorer="holistic", rule=DelayK(10**9))
    prompt, response = _ids(4, 5), _ids(5, 12)
    result = monitor.push(monitor.start(prompt_ids=prompt), response)
    _, offline_holistic = _offline(tiny_model, prompt, response)
    assert result.scores == result.holistic_scores
    assert max(abs(a - b) for a, b in zip(result.scores, offline_holistic)) <= FP32_TOLERANCE


@pytest.mark.parametrize("pooling", ["last-non-pad", "last-attended"])
def test_streamed_holistic_score_of_a_prefix_equals_the_offline_holistic_score(pooling):
    # Offline, the holistic head judges a prefix by pooling it (SCMModel.forward); streaming reads the head at the
    # prefix's last token. With the pad id = EOS = 0 the offline whole response (EOS appended, padded in a batch)
    # pools at its last response token under the paper's rule, so it too equals the last streamed score.
    eos = 0
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), holistic_pooling=pooling,
                               pooling_pad_token_id=eos)).eval()
    prompt, response = [i or 1 for i in _ids(6, 5)], [i or 1 for i in _ids(7, 9)]  # no id equals the EOS
    monitor = StreamingMonitor(model, scorer="holistic", rule=DelayK(10**9))
    streamed = monitor.push(monitor.start(prompt_ids=prompt), response).holistic_scores
    with torch.inference_mode():
        for t in range(len(response)):
            prefix = torch.tensor([prompt + response[:t + 1]])
            offline = torch.softmax(model(prefix).sequence_logits, -1)[0, 1].item()
            assert abs(streamed[t] - offline) <= FP32_TOLERANCE
        # The whole response as evaluation batches it: EOS appended, beside a shorter row padded with the pad id.
        whole = prompt + response + [eos]
        short = prompt[:2] + [eos]
        ids = torch.tensor([whole, short + [eos] * (len(whole) - len(short))])
        mask = torch.tensor([[1] * len(whole), [1] * len(short) + [0] * (len(whole) - len(short))])
        full = torch.softmax(model(ids, attention_mask=mask).sequence_logits, -1)[0, 1].item()
    if pooling == "last-non-pad":
        assert abs(streamed[-1] - full) <= FP32_TOLERANCE
    else:  # the old rule reads the EOS, a position the stream never scores
        assert abs(streamed[-1] - full) > FP32_TOLERANCE


# ------------------------------------------------------------------------------------------- stopping


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_stop_position_equals_the_offline_rule(tiny_model, chunk):
    prompt, response = _ids(6, 6), _ids(7, 30)
    offline_token, _ = _offline(tiny_model, prompt, response)
    ranked = sorted(offline_token)
    theta = (ranked[-5] + ranked[-6]) / 2  # five tokens are flagged, and no score sits on the threshold
    expected = DelayK(3).stop_index([s >= theta for s in offline_token])
    assert expected is not None
    monitor = StreamingMonitor(tiny_model, theta=theta, k=3)
    state = monitor.start(prompt_ids=prompt)
    stop = None
    for first in range(0, len(response), chunk):
        result = monitor.push(state, response[first: first + chunk])
        if result.stopped:
            stop = result.stop
            break
    assert stop is not None and stop.index == expected
    assert stop.token_id == response[expected] and stop.count == 3 and stop.rule == "delay-3"
    assert stop.score == pytest.approx(offline_token[expected], abs=FP32_TOLERANCE)
    assert state.stopped and state.rule_state.seen == expected + 1


def test_consecutive_rule_stops_where_the_offline_rule_does(tiny_model):
    prompt, response = _ids(8, 4), _ids(9, 60)
    offline_token, _ = _offline(tiny_model, prompt, response)
    ranked = sorted(offline_token)
    theta = (ranked[len(ranked) // 2] + ranked[len(ranked) // 2 - 1]) / 2
    expected = ConsecutiveN(2).stop_index([s >= theta for s in offline_token])
    assert expected is not None
    monitor = StreamingMonitor(tiny_model, theta=theta, rule="consecutive-n", k=2)
    result = monitor.push(monitor.start(prompt_ids=prompt), response)
    assert result.stop.index == expected and result.stop.rule == "consecutive-2"
    assert len(result.scores) == len(response)  # every pushed token is scored, also those after the stop


# ------------------------------------------------------------------------------------------- isolation / cost


def _run_stream_a(model, with_neighbours: bool, neighbour_seed: int = 0) -> list[float]:
    monitor = _never_stopping(model)
    prompt, response = _ids(30, 9), _ids(31, 24)
    a = monitor.start(prompt_ids=prompt)
    scores = monitor.push(a, response[:6]).scores
    others = []
    if with_neighbours:
        others = monitor.start_many(prompt_ids=[_ids(neighbour_seed + 40, 30), _ids(neighbour_seed + 41, 3)])
    for step in range(6, 24, 3):
        if with_neighbours and step == 12:
            monitor.close(others[0])  # a neighbour leaves mid-stream
            others = others[1:] + [monitor.start(prompt_ids=_ids(neighbour_seed + 42, 50))]
        batch = [a] + others
        chunks = [response[step: step + 3]] + [_ids(neighbour_seed + step + i, 1 + i) for i in range(len(others))]
        scores += monitor.push_many(batch, chunks)[0].scores
    return scores


def test_a_stream_does_not_change_when_others_are_added_advanced_or_closed(tiny_model):
    alone = _run_stream_a(tiny_model, with_neighbours=False)
    crowded = _run_stream_a(tiny_model, with_neighbours=True, neighbour_seed=0)
    other_crowd = _run_stream_a(tiny_model, with_neighbours=True, neighbour_seed=500)
    assert len(alone) == 24
    assert max(abs(a - b) for a, b in zip(alone, crowded)) <= 1e-6
    assert max(abs(a - b) for a, b in zip(crowded, other_crowd)) <= 1e-6


def test_each_step_runs_the_backbone_on_the_new_tokens_only_and_never_copies_the_past(tiny_model, monkeypatch):
    monitor = _never_stopping(tiny_model)
    states = monitor.start_many(prompt_ids=[_ids(50, 10), _ids(51, 20)])
    slab = states[0]._slab
    key_buffer = slab.keys[0]
    widths = []
    real_step = monitor._run_step

    def recording_step(cache, input_ids, *args):
        widths.append(tuple(input_ids.shape))
        return real_step(cache, input_ids, *args)

    monkeypatch.setattr(monitor, "_run_step", recording_step)
    for step in range(12):
        monitor.push_many(states, [[step], [step, step + 1]])
    assert widths == [(2, 2)] * 12  # (streams, widest push): never the prefix
    assert states[0]._slab is slab and states[1]._slab is slab
    assert slab.keys[0] is key_buffer  # no reallocation, no concatenation: the past stayed where it was
    assert slab.capacity == 20 + 64 and states[1].length == 44


def test_capacity_grows_geometrically(tiny_model):
    monitor = _never_stopping(tiny_model)
    state = monitor.start(prompt_ids=[1])
    capacities = set()
    for token in range(400):
        monitor.push(state, [token % TINY_VOCAB])
        capacities.add(state._slab.capacity)
    assert sorted(capacities) == [65, 130, 260, 520]


def test_a_stream_joining_a_batch_is_copied_into_a_free_row(tiny_model):
    monitor = _never_stopping(tiny_model)
    states = monitor.start_many(prompt_ids=[_ids(60 + i, 5) for i in range(4)])
    slab = states[0]._slab
    monitor.close(states[3])
    newcomer = monitor.start(prompt_ids=_ids(70, 8))
    monitor.push_many(states[:3] + [newcomer], [[1]] * 4)
    assert newcomer._slab is slab and newcomer._row == 3 and slab.owners[3] is newcomer


# ------------------------------------------------------------------------------------------- misuse


def test_push_after_close_raises(tiny_model):
    monitor = _never_stopping(tiny_model)
    state = monitor.start(prompt_ids=[1, 2])
    monitor.close(state)
    monitor.close(state)  # closing twice is harmless
    with pytest.raises(StreamClosedError, match="stream .* is closed; start a new stream"):
        monitor.push(state, [3])


def test_push_after_stop_raises(tiny_model):
    monitor = StreamingMonitor(tiny_model, theta=0.0, k=1)  # every token is flagged
    state = monitor.start(prompt_ids=[1, 2])
    assert monitor.push(state, [3, 4]).stop.index == 0
    with pytest.raises(StreamStoppedError, match="already stopped .*stop the generation and close the stream"):
        monitor.push(state, [5])


def test_exceeding_the_maximum_length_raises_and_changes_nothing(tiny_model):
    monitor = _never_stopping(tiny_model)
    state = monitor.start(prompt_ids=[1] * 500)
    with pytest.raises(StreamLengthError, match="513 tokens long, beyond the model's maximum of 512"):
        monitor.push(state, [2] * 13)
    assert state.length == 500
    assert len(monitor.push(state, [2] * 12).scores) == 12
    with pytest.raises(StreamLengthError, match="maximum of 512"):
        monitor.start(prompt_ids=[1] * 513)


@pytest.mark.parametrize("bad, match", [([5, TINY_VOCAB], "token id 512 at position 1 .* outside the model's vocab"),
                                        ([-1], "token id -1 at position 0"),
                                        ([1.5], "position 0 .* not an integer"),
                                        ("abc", "expected a sequence of token ids"),
                                        (torch.tensor([[1, 2]]), "expected a 1D tensor")])
def test_bad_token_ids_raise(tiny_model, bad, match):
    monitor = _never_stopping(tiny_model)
    state = monitor.start(prompt_ids=[1])
    with pytest.raises(InvalidTokenError, match=match):
        monitor.push(state, bad)
    assert state.length == 1


def test_ids_may_come_as_tensors_arrays_or_numpy_integers(tiny_model):
    import numpy as np

    monitor = _never_stopping(tiny_model)
    states = monitor.start_many(prompt_ids=[[1, 2], torch.tensor([1, 2]), np.array([1, 2])])
    results = monitor.push_many(states, [[7, 8], torch.tensor([7, 8]), [np.int64(7), np.int32(8)]])
    assert results[0].scores == results[1].scores == results[2].scores and len(results[0].scores) == 2


def test_empty_pushes_are_no_ops(tiny_model, monkeypatch):
    monitor = _never_stopping(tiny_model)
    state = monitor.start(prompt_ids=[1, 2, 3])
    monkeypatch.setattr(monitor, "_run_step", lambda *a: pytest.fail("an empty push ran the backbone"))
    for empty in ([], (), torch.tensor([], dtype=torch.long)):
        result = monitor.push(state, empty)
        assert result.scores == [] and not result.stopped and result.seen == 0
    assert monitor.push_many([], []) == []
    assert state.length == 3


def test_a_failing_push_many_advances_no_stream(tiny_model):
    monitor = _never_stopping(tiny_model)
    good, closed = monitor.start_many(prompt_ids=[[1], [2]])
    monitor.close(closed)
    with pytest.raises(StreamClosedError):
        monitor.push_many([good, closed], [[3], [4]])
    with pytest.raises(ValueError, match="appears twice"):
        monitor.push_many([good, good], [[3], [4]])
    with pytest.raises(ValueError, match="2 states but 1 lists"):
        monitor.push_many([good, closed], [[3]])
    assert good.length == 1


def test_start_and_foreign_state_errors(tiny_model):
    monitor, other = _never_stopping(tiny_model), _never_stopping(tiny_model)
    with pytest.raises(ValueError, match="either prompt or prompt_ids"):
        monitor.start("hi", prompt_ids=[1])
    with pytest.raises(ValueError, match="needs a prompt"):
        monitor.start()
    with pytest.raises(ValueError, match="no tokenizer"):
        monitor.start("hi")
    with pytest.raises(ValueError, match="prompt is empty"):
        monitor.start(prompt_ids=[])
    with pytest.raises(ValueError, match="returned by this monitor"):
        monitor.push(other.start(prompt_ids=[1]), [2])


@pytest.mark.parametrize("kwargs, match", [({"theta": 1.5}, "theta"), ({"scorer": "both"}, "scorer"),
                                           ({"rule": "majority"}, "unknown decision rule"), ({"k": 0}, "k must")])
def test_bad_operating_points_are_rejected(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamingMonitor(tiny_model, **kwargs)


# ------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def smol_tokenizer():
    from model.assets import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def tiny_smol_checkpoint(tmp_path_factory, smol_tokenizer):
    from model.assets import smollm2_path

    return build_tiny_scm(tmp_path_factory.mktemp("tiny-scm-smol"), smollm2_path(), theta=0.7, delay_k=3,
                          scorer="holistic")


def test_from_pretrained_takes_the_operating_point_from_the_checkpoint(tiny_smol_checkpoint):
    monitor = StreamingMonitor.from_pretrained(tiny_smol_checkpoint, device="cpu")
    assert (monitor.theta, monitor.rule.name, monitor.scorer) == (0.7, "delay-3", "holistic")
    assert monitor.max_length == 2048 and monitor.vocab_size == 49152
    tuned = StreamingMonitor.from_pretrained(tiny_smol_checkpoint, theta=0.4, rule="consecutive-n", scorer="token",
                                             device="cpu", dtype="bf16")
    assert (tuned.theta, tuned.rule.name, tuned.scorer) == (0.4, "consecutive-2", "token")
    assert tuned.model.dtype == torch.bfloat16


def test_start_encodes_the_prompt_like_the_data_processing(tiny_smol_checkpoint, smol_tokenizer):
    monitor = StreamingMonitor.from_pretrained(tiny_smol_checkpoint, device="cpu")
    expected = [smol_tokenizer.bos_token_id] + smol_tokenizer("How are you?\n\n", add_special_tokens=False)["input_ids"]
    assert encode_prompt(smol_tokenizer, "How are you?") == expected and expected[0] == 1
    state = monitor.start("How are you?")
    assert state.prompt_length == len(expected)
    by_text = monitor.push(state, [100, 200]).scores
    by_ids = monitor.push(monitor.start(prompt_ids=expected), [100, 200]).scores
    assert by_text == by_ids


def test_from_pretrained_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run-scm.sh"):
        StreamingMonitor.from_pretrained(tmp_path / "missing")
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="needs an SCM checkpoint"):
        StreamingMonitor.from_pretrained(tmp_path / "llama")


@pytest.mark.slow
def test_smollm2_streaming_equals_offline():
    from model.assets import smollm2_path

    model = SCMModel.from_backbone(str(smollm2_path())).eval()
    monitor = StreamingMonitor(model, rule=DelayK(10**9), attn_implementation="sdpa")
    prompts = [_ids(90, 40), _ids(91, 13)]
    responses = [_ids(92, 60), _ids(93, 35)]
    states = monitor.start_many(prompt_ids=prompts)
    token, holistic = [[], []], [[], []]
    rng = random.Random(0)
    done = [0, 0]
    while any(d < len(r) for d, r in zip(done, responses)):
        chunks = [r[d: d + rng.randint(0, 6)] for d, r in zip(done, responses)]
        done = [d + len(c) for d, c in zip(done, chunks)]
        for i, result in enumerate(monitor.push_many(states, chunks)):
            token[i] += result.token_scores
            holistic[i] += result.holistic_scores
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        offline_token, offline_holistic = _offline(model, prompt, response)
        assert max(abs(a - b) for a, b in zip(token[i], offline_token)) <= 1e-4
        assert max(abs(a - b) for a, b in zip(holistic[i], offline_holistic)) <= 1e-4


# ------------------------------------------------------------------------------------------- memory (issue 11)


def _assert_slabs_are_compact(monitor: StreamingMonitor) -> None:
    """At least half of each slab's rows are live, and its capacity is within 3x its longest stream (or 128)."""
    for slab in monitor._slabs.values():
        lengths = [owner.length for owner in slab.owners if owner is not None]
        assert lengths and 2 * len(lengths) >= slab.n_rows
        assert slab.capacity <= max(3 * (max(lengths) + 1), 128)


def test_memory_stays_proportional_to_what_open_streams_hold(tiny_model):
    # The scenario, scaled down: streams pushed in random subsets used to leave their old slabs alive, so
    # 400 open streams needing 158 MB of KV held 2,353 MB, and one idle stream kept a 173 MB slab alive.
    monitor = _never_stopping(tiny_model)
    rng = random.Random(5)
    states = []
    for _ in range(4):
        states += monitor.start_many(prompt_ids=[_ids(rng.randrange(10**6), rng.randint(3, 40)) for _ in range(20)])
    idle = states[0]
    for _ in range(30):
        subset = [s for s in states[1:] if rng.random() < rng.choice([0.05, 0.3, 0.6, 0.95])]
        if subset:
            monitor.push_many(subset, [_ids(rng.randrange(10**6), rng.randint(1, 3)) for _ in subset])
    stats = monitor.memory_stats()
    assert stats["open_streams"] == 80 and stats["kv_bytes_needed"] > 0
    _assert_slabs_are_compact(monitor)
    # Short streams (about 50 tokens) make the 64-column headroom of a slab count: the bound is loose here.
    assert stats["kv_bytes_held"] <= 6 * stats["kv_bytes_needed"], stats
    assert idle._slab.n_rows <= 2  # the idle stream was compacted out of the big slabs
    # Closing streams frees their slabs; closing all frees everything.
    for state in states[::2]:
        monitor.close(state)
    half = monitor.memory_stats()
    assert half["open_streams"] == 40 and half["kv_bytes_held"] <= 6 * half["kv_bytes_needed"], half
    _assert_slabs_are_compact(monitor)
    for state in states[1::2]:
        monitor.close(state)
    assert monitor.memory_stats() == {"open_streams": 0, "slabs": 0, "rows": 0, "kv_bytes_held": 0,
                                      "kv_bytes_needed": 0}


def test_compaction_keeps_scores_equal_to_offline(tiny_model):
    monitor = _never_stopping(tiny_model)
    prompts = [_ids(200 + i, 5 + i) for i in range(8)]
    responses = [_ids(300 + i, 30) for i in range(8)]
    states = monitor.start_many(prompt_ids=prompts)
    streamed = [result.scores for result in monitor.push_many(states, [response[:10] for response in responses])]
    for state in states[2:]:
        monitor.close(state)  # at 3 of 8 live rows the slab is compacted into a 3-row one
    assert states[0]._slab is states[1]._slab and states[0]._slab.n_rows == 3
    for i in range(2):
        streamed[i] += monitor.push(states[i], responses[i][10:]).scores
        expected, _ = _offline(tiny_model, prompts[i], responses[i])
        assert max(abs(a - b) for a, b in zip(streamed[i], expected)) <= FP32_TOLERANCE


def test_a_long_stream_leaving_shrinks_the_slab(tiny_model):
    monitor = _never_stopping(tiny_model)
    long, short = monitor.start_many(prompt_ids=[_ids(1, 300), _ids(2, 5)])
    monitor.push_many([long, short], [_ids(3, 100), [7]])
    assert short._slab.capacity >= 400
    monitor.close(long)
    assert short._slab.capacity < 100 and monitor.memory_stats()["slabs"] == 1


# ------------------------------------------------------------------------------------------- clear errors (issue 11)


def test_misuse_of_the_api_gets_clear_errors(tiny_model):
    import numpy as np

    monitor = _never_stopping(tiny_model)
    state = monitor.start(prompt_ids=[1, 2])
    with pytest.raises(InvalidTokenError, match=r"got a single int64 .*wrap one id in a list"):
        monitor.push(state, np.int64(5))
    with pytest.raises(InvalidTokenError, match="got a single Tensor"):
        monitor.push(state, torch.tensor(5))
    with pytest.raises(TypeError, match="the prompt must be the prompt text"):
        monitor.start(123)
    with pytest.raises(TypeError, match="prompt 1 must be the prompt text"):
        monitor.start_many(["fine", 123])
    with pytest.raises(TypeError, match=r"close\(\) needs a StreamState .*got NoneType"):
        monitor.close(None)
    with pytest.raises(ValueError, match="got NoneType"):
        monitor.push(None, [1])
    assert state.length == 2 and len(monitor.push(state, [np.int64(5)]).scores) == 1


def test_an_over_long_prompt_is_named_as_the_prompt(tiny_model):
    monitor = _never_stopping(tiny_model)
    with pytest.raises(StreamLengthError, match=r"prompt 1 is 600 tokens long .*maximum of 512 .*shorten the prompt"):
        monitor.start_many(prompt_ids=[[1], [1] * 600])
    assert monitor.memory_stats()["open_streams"] == 0  # nothing was opened


def test_prompts_are_cut_as_the_checkpoints_training_data_was(tmp_path, smol_tokenizer):
    """A monitor trained on the last N prompt tokens (data --max-prompt-tokens N) is served the last N, not the
    whole prompt; one whose config records no cut (None) is served whole prompts."""
    from model.assets import smollm2_path
    from utils.data_process import ExampleEncoder
    from utils.io_utils import write_json

    prompt, cut = "Please tell me, in many words, how the weather is today?", 4
    (layout,) = ExampleEncoder(smol_tokenizer, max_prompt_tokens=cut).layouts([(prompt, ["Fine."])])
    trained_on = layout.input_ids[: layout.response_start]
    assert len(trained_on) == 1 + cut
    checkpoint = build_tiny_scm(tmp_path / "cut", smollm2_path())
    config = json.loads((checkpoint / "config.json").read_text())
    write_json(checkpoint / "config.json", {**config, "max_prompt_tokens": cut})
    monitor = StreamingMonitor.from_pretrained(checkpoint, device="cpu")
    assert monitor.encode_prompt(prompt) == trained_on and monitor.max_prompt_tokens == cut
    assert monitor.start(prompt).prompt_length == 1 + cut
    whole = len(encode_prompt(smol_tokenizer, prompt))
    assert whole > 1 + cut
    assert config["max_prompt_tokens"] is None  # every checkpoint records it; None: whole prompts
    write_json(checkpoint / "config.json", config)
    uncut = StreamingMonitor.from_pretrained(checkpoint, device="cpu")
    assert len(uncut.encode_prompt(prompt)) == whole and uncut.max_prompt_tokens is None
