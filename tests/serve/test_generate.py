"""serve/generate.py on tiny random models: MonitorStoppingCriteria stops generate() exactly where the monitor says
(one row or a batch, rows stopping independently), never pushes end-of-sequence, refuses what it cannot follow
(beam search, a second generate call) and works with a generator that has no pad token."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM, StoppingCriteriaList

from model import SCMConfig, SCMModel
from serve.generate import MonitorStoppingCriteria
from serve.monitor import StreamingMonitor, score_offline
from tests.tiny_checkpoints import tiny_llama_config
from utils.decision_rules import DelayK

PROMPT = torch.tensor([[1, 504, 3458, 30]])


@pytest.fixture(scope="module")
def smol_tokenizer():
    from model.assets import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def generator(smol_tokenizer):
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_llama_config(smol_tokenizer)).eval()
    model.generation_config.pad_token_id = smol_tokenizer.pad_token_id
    return model


@pytest.fixture(scope="module")
def monitor(smol_tokenizer):
    torch.manual_seed(2)
    return StreamingMonitor(SCMModel(SCMConfig(backbone_config=tiny_llama_config(smol_tokenizer).to_dict())).eval(),
                            rule=DelayK(10**9))


def _offline(model, prompt: list[int], response: list[int]) -> tuple[list[float], list[float]]:
    token, holistic = score_offline(model, torch.tensor([prompt + response]))
    return token[0, len(prompt):].tolist(), holistic[0, len(prompt):].tolist()


def _never_stopping(model, **kwargs) -> StreamingMonitor:
    return StreamingMonitor(model, rule=DelayK(10**9), **kwargs)


@pytest.fixture(scope="module")
def smol_scm(smol_tokenizer):
    torch.manual_seed(2)
    return SCMModel(SCMConfig(backbone_config=tiny_llama_config(smol_tokenizer).to_dict())).eval()


def _generate(generator, input_ids, attention_mask, max_new_tokens, criteria=None, do_sample=True, **kwargs):
    """Seeded sampling (a tiny random LM decodes greedily into one repeated token): reruns give the same tokens."""
    if criteria is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([criteria])
    torch.manual_seed(123)
    return generator.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                              do_sample=do_sample, eos_token_id=None, **kwargs)


def _generate_8(generator, criteria, **kwargs):
    return _generate(generator, PROMPT, torch.ones_like(PROMPT), 8, criteria, **kwargs)


def test_generation_stops_at_the_token_the_monitor_flags(smol_scm, generator):
    # A token head with zero weights and a bias towards "harmful" flags every token: delay-4 stops at index 3.
    head = smol_scm.token_scorer[1]
    saved = head.weight.detach().clone(), head.bias.detach().clone()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0]))
    try:
        monitor = StreamingMonitor(smol_scm, theta=0.9, k=4)
        prompt = torch.tensor([[1, 504, 3458, 30]])
        criteria = MonitorStoppingCriteria(monitor, [monitor.start(prompt_ids=[1, 9, 9])])
        output = _generate(generator, prompt, torch.ones_like(prompt), 20, criteria)
    finally:
        with torch.no_grad():
            head.weight.copy_(saved[0])
            head.bias.copy_(saved[1])
    assert output.shape[1] == prompt.shape[1] + 4
    stop = criteria.stops[0]
    assert stop.index == 3 and stop.token_id == output[0, -1].item() and stop.count == 4
    assert stop.score == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), abs=1e-6)


def test_batched_generation_stops_each_row_where_the_offline_rule_does(smol_scm, generator, smol_tokenizer):
    left_pad = smol_tokenizer.pad_token_id
    input_ids = torch.tensor([[left_pad, left_pad, 1, 504, 3458], [1, 9690, 198, 2683, 359]])
    attention_mask = (torch.arange(5) >= torch.tensor([[2], [0]])).long()
    reference = _generate(generator, input_ids, attention_mask, 24)[:, 5:].tolist()
    monitor_prompts = [[1, 504, 3458], [1, 9690, 198, 2683, 359]]
    offline = [_offline(smol_scm, p, r)[0] for p, r in zip(monitor_prompts, reference)]
    # Pick theta and k so that the rows stop at different, known positions.
    ranked = sorted({s for row in offline for s in row}, reverse=True)
    # Midpoints between neighbouring scores, so that no score sits on the threshold.
    for theta in [(high + low) / 2 for high, low in zip(ranked, ranked[1:])]:
        expected = [DelayK(2).stop_index([s >= theta for s in row]) for row in offline]
        if None not in expected and expected[0] != expected[1]:
            break
    else:
        pytest.fail("no threshold separates the rows")
    monitor = StreamingMonitor(smol_scm, theta=theta, k=2)
    criteria = MonitorStoppingCriteria(monitor, monitor.start_many(prompt_ids=monitor_prompts))
    output = _generate(generator, input_ids, attention_mask, 24, criteria)[:, 5:].tolist()
    assert [stop.index for stop in criteria.stops] == expected
    assert len(output[0]) == max(expected) + 1
    for row, stop_at in enumerate(expected):
        assert output[row][: stop_at + 1] == reference[row][: stop_at + 1]
        assert output[row][stop_at + 1:] == [left_pad] * (len(output[row]) - stop_at - 1)  # padded after its stop


def test_end_of_sequence_is_not_pushed_and_ends_the_row(smol_scm, generator):
    prompt = torch.tensor([[1, 504, 3458, 30]])
    reference = _generate(generator, prompt, torch.ones_like(prompt), 10)[0, 4:].tolist()
    at = next(i for i in range(2, 10) if reference[i] not in reference[:i])
    monitor = _never_stopping(smol_scm)
    state = monitor.start(prompt_ids=[1, 5])
    criteria = MonitorStoppingCriteria(monitor, [state], eos_token_id=reference[at])
    _generate(generator, prompt, torch.ones_like(prompt), 10, criteria)
    assert state.n_response_tokens == at and criteria.finished == [True]


def test_criteria_needs_one_state_per_row(smol_scm, generator):
    monitor = _never_stopping(smol_scm)
    criteria = MonitorStoppingCriteria(monitor, [monitor.start(prompt_ids=[1])])
    with pytest.raises(ValueError, match="runs 2 rows but the criteria has 1 stream states"):
        criteria(torch.ones((2, 3), dtype=torch.long))


# ------------------------------------------------------------------------------------------- refusals (issue 11)


def test_beam_search_is_refused_with_a_clear_error(generator, monitor):
    # num_beams=2 hands the criteria 2 x 2 candidate rows: one stream state is not enough, and says why.
    criteria = MonitorStoppingCriteria(monitor, [monitor.start(prompt_ids=[1, 5])])
    with pytest.raises(ValueError, match=r"4 rows but the criteria has 1 stream states.*Beam search .* not supported"):
        _generate_8(generator, criteria, num_beams=2, do_sample=False)
    # Before the fix, one state per candidate was accepted (as the old message suggested) and the states then
    # judged sequences that never existed: the candidates are re-ordered between steps.
    states = monitor.start_many(prompt_ids=[[1, 5]] * 4)
    criteria = MonitorStoppingCriteria(monitor, states)
    with pytest.raises(ValueError, match=r"no longer continue what the monitor already scored.*num_beams"):
        _generate_8(generator, criteria, num_beams=2, do_sample=False)


def test_a_criteria_reused_for_a_second_generate_is_refused(generator, monitor):
    state = monitor.start(prompt_ids=[1, 5])
    criteria = MonitorStoppingCriteria(monitor, [state])
    _generate_8(generator, criteria, do_sample=True)
    assert state.n_response_tokens == 8
    # Before the fix the second call silently skipped a token and pushed the rest onto the old stream.
    with pytest.raises(ValueError, match=r"serves one generate\(\) call; create a new one"):
        _generate_8(generator, criteria, do_sample=True)
    assert state.n_response_tokens == 8


def test_a_failed_push_leaves_the_criteria_as_it_was(monitor):
    state = monitor.start(prompt_ids=[1, 5])
    criteria = MonitorStoppingCriteria(monitor, [state], prompt_length=4)
    monitor.close(state)
    with pytest.raises(Exception, match="is closed"):
        criteria(torch.tensor([[1, 2, 3, 4, 9]]))
    assert criteria._consumed == 4 and criteria._previous is None


def test_a_generator_without_pad_and_eos_tokens_works_for_one_row(smol_tokenizer, monitor):
    torch.manual_seed(1)
    bare = LlamaForCausalLM(tiny_llama_config(smol_tokenizer)).eval()
    bare.generation_config.pad_token_id = None
    bare.generation_config.eos_token_id = None
    state = monitor.start(prompt_ids=[1, 5])
    criteria = MonitorStoppingCriteria(monitor, [state])
    # Before the fix generate raised a TypeError deep inside (None * a tensor) when padding finished rows.
    output = _generate_8(bare, criteria, do_sample=True)
    assert output.shape[1] == PROMPT.shape[1] + 8 and state.n_response_tokens == 8
    assert not hasattr(criteria, "eos_token_id")  # one row: generate never needs to pad it
    several = MonitorStoppingCriteria(monitor, monitor.start_many(prompt_ids=[[1], [2]]))
    assert several.eos_token_id == []  # several rows: generate pads the stopped ones
    with pytest.raises(ValueError, match="same stream state for two rows"):
        MonitorStoppingCriteria(monitor, [state, state])
