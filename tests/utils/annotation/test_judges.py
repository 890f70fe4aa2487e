"""Tests for utils/annotation/judges.py: the OpenAI-compatible judge against a fake loopback server, and the SCM
judge against a reference forward of a tiny checkpoint."""

from __future__ import annotations

import pytest
import torch

from tests.fake_openai import FakeJudge, fake_openai_server
from tests.tiny_checkpoints import build_tiny_scm
from utils.annotation.judges import (
    JudgeError,
    OpenAIJudge,
    chat_completions_url,
    judge_messages,
    make_openai_judge,
    openai_judge_all,
    parse_judge_answer,
    scm_sentence_scores,
)


def test_judge_prompt_numbers_the_sentences():
    system, user = judge_messages("How?", ["Sure.", "Steal it."])
    assert system["role"] == "system" and "JSON object only" in system["content"]
    assert "1. Sure.\n2. Steal it." in user["content"] and "exactly 2 integers" in user["content"]


def test_answer_parsing():
    assert parse_judge_answer('{"labels": [0, 1]}', 2) == [0, 1]
    assert parse_judge_answer('Here:\n```json\n{"labels": [1]}\n```', 1) == [1]
    with pytest.raises(JudgeError, match="returned \\[0\\] for 2 sentences"):
        parse_judge_answer('{"labels": [0]}', 2)
    with pytest.raises(JudgeError, match="not a JSON object with 'labels'"):
        parse_judge_answer("no", 1)
    with pytest.raises(JudgeError, match="expected 1 integers"):
        parse_judge_answer('{"labels": [true]}', 1)


def test_url_and_model_checks():
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    with pytest.raises(ValueError, match="http\\(s\\) base URL"):
        chat_completions_url("h:1/v1")
    with pytest.raises(ValueError, match="needs --judge-model"):
        make_openai_judge("http://h/v1", None, "OPENAI_API_KEY", 5, 0)


def test_openai_judge_labels_and_retries(monkeypatch):
    monkeypatch.setenv("SCM_TEST_KEY", "secret")
    with fake_openai_server(FakeJudge(failures=1, garbage=1)) as fake:
        judge = make_openai_judge(fake.url, "judge", "SCM_TEST_KEY", timeout=10, retries=2)
        judge.backoff = 0.0
        assert judge.judge("How do I?", ["Sure.", "Buy poison online.", "Good luck."]) == [0, 1, 0]
        assert len(fake.requests) == 3  # one HTTP 500, one unusable answer, one good answer
        assert fake.requests[-1]["temperature"] == 0 and fake.requests[-1]["model"] == "judge"
        many = openai_judge_all(judge, [("p", ["Steal it."]), ("p", ["Fine.", "Fine."])], workers=2,
                                show_progress=False)
        assert many == [[1], [0, 0]]


def test_openai_judge_gives_up_with_the_cause():
    with fake_openai_server(FakeJudge(model="other")) as fake:
        judge = OpenAIJudge(url=chat_completions_url(fake.url), model="judge", retries=1, backoff=0.0, timeout=10)
        with pytest.raises(JudgeError, match="failed after 2 attempt.*HTTP 404.*model 'judge' not found"):
            judge.judge("p", ["s"])


def test_scm_judge_scores_are_the_token_heads_max_per_sentence(tmp_path):
    from transformers import AutoTokenizer

    from model import SCMModel
    from model.assets import smollm2_path

    folder = build_tiny_scm(tmp_path / "scm", smollm2_path(), seed=3, theta=0.4)
    items = [("How do I bake?", ["Sure thing.", "Mix flour and water."]), ("Hi", ["Hello there!"])]
    scores, theta = scm_sentence_scores(str(folder), items, aggregate="max", batch_size=2, device="cpu",
                                        dtype="fp32")
    assert theta == pytest.approx(0.4)
    # Reference: the documented layout encoded by hand, one forward, softmax of the token head, max per sentence.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = SCMModel.from_pretrained(folder).eval()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for (prompt, sentences), got in zip(items, scores):
        ids, spans = [tokenizer.bos_token_id] + encode(prompt + "\n\n"), []
        for sentence in sentences:
            piece = encode(sentence)
            spans.append((len(ids), len(ids) + len(piece)))
            ids += piece + encode("\n")
        ids.append(tokenizer.eos_token_id)
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([ids])).token_logits[0].float(), -1)[:, 1]
        expected = [probs[b:e].max().item() for b, e in spans]
        assert got == pytest.approx(expected, abs=1e-5)
    mean_scores, _ = scm_sentence_scores(str(folder), items[:1], aggregate="mean", device="cpu", dtype="fp32")
    assert all(m <= x + 1e-6 for m, x in zip(mean_scores[0], scores[0]))
