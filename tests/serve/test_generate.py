"""serve/generate.py: MonitorStoppingCriteria refuses what it cannot follow (beam search, a second generate call)
and works with a generator that has no pad token. The stopping behaviour itself is tested in test_monitor.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM, StoppingCriteriaList

from model import SCMConfig, SCMModel
from serve.generate import MonitorStoppingCriteria
from serve.monitor import StreamingMonitor
from tests.tiny_checkpoints import tiny_llama_config
from utils.decision_rules import DelayK

PROMPT = torch.tensor([[1, 504, 3458, 30]])


@pytest.fixture(scope="module")
def smol_tokenizer():
    from utils.assets import smollm2_path

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


def _generate(generator, criteria, **kwargs):
    torch.manual_seed(123)
    return generator.generate(input_ids=PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=8,
                              stopping_criteria=StoppingCriteriaList([criteria]), eos_token_id=None, **kwargs)


def test_beam_search_is_refused_with_a_clear_error(generator, monitor):
    # num_beams=2 hands the criteria 2 x 2 candidate rows: one stream state is not enough, and says why.
    criteria = MonitorStoppingCriteria(monitor, [monitor.start(prompt_ids=[1, 5])])
    with pytest.raises(ValueError, match=r"4 rows but the criteria has 1 stream states.*Beam search .* not supported"):
        _generate(generator, criteria, num_beams=2, do_sample=False)
    # Before the fix, one state per candidate was accepted (as the old message suggested) and the states then
    # judged sequences that never existed: the candidates are re-ordered between steps.
    states = monitor.start_many(prompt_ids=[[1, 5]] * 4)
    criteria = MonitorStoppingCriteria(monitor, states)
    with pytest.raises(ValueError, match=r"no longer continue what the monitor already scored.*num_beams"):
        _generate(generator, criteria, num_beams=2, do_sample=False)


def test_a_criteria_reused_for_a_second_generate_is_refused(generator, monitor):
    state = monitor.start(prompt_ids=[1, 5])
    criteria = MonitorStoppingCriteria(monitor, [state])
    _generate(generator, criteria, do_sample=True)
    assert state.n_response_tokens == 8
    # Before the fix the second call silently skipped a token and pushed the rest onto the old stream.
    with pytest.raises(ValueError, match=r"serves one generate\(\) call; create a new one"):
        _generate(generator, criteria, do_sample=True)
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
    output = _generate(bare, criteria, do_sample=True)
    assert output.shape[1] == PROMPT.shape[1] + 8 and state.n_response_tokens == 8
    assert not hasattr(criteria, "eos_token_id")  # one row: generate never needs to pad it
    several = MonitorStoppingCriteria(monitor, monitor.start_many(prompt_ids=[[1], [2]]))
    assert several.eos_token_id == []  # several rows: generate pads the stopped ones
    with pytest.raises(ValueError, match="same stream state for two rows"):
        MonitorStoppingCriteria(monitor, [state, state])
