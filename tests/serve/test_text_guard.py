"""The text-stream guard (serve/text_guard.py): exact incremental re-tokenisation, hold-back, stop semantics.

The monitor is a tiny random SCM over the SmolLM2 tokenizer's full vocabulary; where a test needs to know which
token stops the stream, the token head is set to flag every token (zero weights, bias towards "harmful").
"""

from __future__ import annotations

import copy
import random
import unicodedata

import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from model import SCMConfig, SCMModel
from serve.monitor import StreamingMonitor, StreamLengthError
from serve.text_guard import STOP_NOTICE, IncrementalTokenizer, TextStreamGuard, feed_many, finish_many, start_guards
from tests.tiny_checkpoints import tiny_llama_config
from utils.decision_rules import DelayK

TEXTS = [
    "Sure! It'll cost $1,234.56 — don't  worry.\n\n  Step 2:\tmix 😀 café e\u0301 日本語 x'",
    "they've WE'RE a'b 'll '\n'ss   trailing   ",
    "abc123def 4567 3.14159 http://x.y/z?a=b&c=d #tag\r\n\r\n- item",
]


@pytest.fixture(scope="module")
def smol_tokenizer():
    from model.assets import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_tokenizer_dir):
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def scm(smol_tokenizer) -> SCMModel:
    torch.manual_seed(0)
    return SCMModel(SCMConfig(backbone_config=tiny_llama_config(smol_tokenizer).to_dict())).eval()


@pytest.fixture(scope="module")
def flag_everything_scm(smol_tokenizer) -> SCMModel:
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(smol_tokenizer).to_dict())).eval()
    with torch.no_grad():
        model.token_scorer[1].weight.zero_()
        model.token_scorer[1].bias.copy_(torch.tensor([0.0, 5.0]))
    return model


def _chunks(text: str, rng: random.Random) -> list[str]:
    out, at = [], 0
    while at < len(text):
        size = rng.choice([0, 0, 1, 1, 2, 3, 5, 8])  # zeros: empty chunks
        out.append(text[at: at + size])
        at += size
    return out


def _stream(tokenizer, pieces) -> list[int]:
    incremental = IncrementalTokenizer(tokenizer)
    ids = []
    for piece in pieces:
        ids += [t.token_id for t in incremental.add(piece)]
    return ids + [t.token_id for t in incremental.flush()]


@pytest.mark.parametrize("which", ["smol_tokenizer", "qwen_tokenizer"])
def test_incremental_tokens_equal_tokenizing_the_full_text(which, request):
    tokenizer = request.getfixturevalue(which)
    rng = random.Random(0)
    for text in TEXTS:
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert _stream(tokenizer, list(text)) == full  # one character at a time
        for _ in range(15):
            assert _stream(tokenizer, _chunks(text, rng)) == full


def test_a_word_split_across_chunks_is_held_back_until_it_is_complete(smol_tokenizer):
    incremental = IncrementalTokenizer(smol_tokenizer)
    assert incremental.add("Hello wor") == []  # "Hello" and " wor" are both held back
    committed = incremental.add("ld, friend")
    assert [t.token_id for t in committed] == smol_tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert (committed[-1].start, committed[-1].end) == (5, 11)
    assert incremental.committed_chars == 11


def test_a_trailing_apostrophe_waits_for_the_contraction(smol_tokenizer):
    # Holding back only the last pre-token would commit "'" before "ll" arrives; the tokenizer has "'ll" as one token.
    ids = _stream(smol_tokenizer, ["it", "'", "ll", " be", " fine"])
    assert ids == smol_tokenizer("it'll be fine", add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.convert_ids_to_tokens(ids)[1] == "'ll"


def test_a_tokenizer_that_adds_a_prefix_space_is_rejected(smol_tokenizer):
    prefixing = copy.deepcopy(smol_tokenizer)
    prefixing.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(ValueError, match="cannot be re-tokenised incrementally"):
        IncrementalTokenizer(prefixing)


def test_a_slow_tokenizer_is_rejected():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        IncrementalTokenizer(Slow())


def _guard(model, tokenizer, **kwargs) -> TextStreamGuard:
    monitor = StreamingMonitor(model, tokenizer, **kwargs.pop("monitor", {"rule": DelayK(10**9)}))
    return TextStreamGuard(monitor, "How do I bake bread?", **kwargs)


def test_bytes_split_inside_characters_and_empty_chunks_give_the_full_tokenization(scm, smol_tokenizer):
    text = TEXTS[0]
    guard = _guard(scm, smol_tokenizer)
    data = text.encode("utf-8")
    monitored, scores, released = [], [], ""
    for at in range(0, len(data), 3):  # 3-byte chunks split 2- and 4-byte characters
        for delta in (data[at: at + 3], b"", None):
            update = guard.feed(delta)
            monitored += update.token_ids
            scores += update.scores
            released += update.released
    final = guard.finish()
    monitored += final.token_ids
    scores += final.scores
    released += final.released
    assert monitored == smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert released == text and final.finished and not final.stopped
    # The guard's scores are the monitor's scores of the full tokenization pushed at once.
    reference = StreamingMonitor(scm, smol_tokenizer, rule=DelayK(10**9))
    expected = reference.push(reference.start("How do I bake bread?"), monitored).scores
    assert max(abs(a - b) for a, b in zip(scores, expected)) <= 1e-5


def test_an_incomplete_character_at_the_end_becomes_a_replacement_character(scm, smol_tokenizer):
    guard = _guard(scm, smol_tokenizer)
    guard.feed("ok ".encode() + "😀".encode()[:2])
    assert guard.finish().released == "ok \ufffd"


def test_hold_back_never_releases_unscored_text(scm, smol_tokenizer):
    guard = _guard(scm, smol_tokenizer)
    scored_end = 0
    for chunk in _chunks(TEXTS[1] + TEXTS[0], random.Random(1)):
        update = guard.feed(chunk)
        if update.token_ids:
            scored_end = guard.retokenizer.committed_chars
        assert guard.released_chars <= scored_end
        assert guard.released_text == guard.text[: guard.released_chars]
    assert guard.released_chars < len(guard.text)  # the tail waits for finish()
    guard.finish()
    assert guard.released_text == TEXTS[1] + TEXTS[0]


def test_pass_through_releases_text_on_arrival(scm, smol_tokenizer):
    guard = _guard(scm, smol_tokenizer, hold_back=False)
    assert guard.feed("Hello wor").released == "Hello wor"
    assert guard.feed("").released == ""
    assert guard.feed("ld").released == "ld"
    assert guard.finish().released == ""


@pytest.mark.parametrize("hold_back", [True, False])
def test_after_a_stop_the_user_sees_the_text_before_the_stop_token_and_a_notice(flag_everything_scm, smol_tokenizer,
                                                                                 hold_back):
    guard = _guard(flag_everything_scm, smol_tokenizer, hold_back=hold_back, monitor={"theta": 0.9, "k": 3})
    text = "Mix the flour with water and salt, then knead."
    tokens = smol_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    third_token_start = tokens["offset_mapping"][2][0]  # delay-3 fires on the third monitored token
    shown, stop = "", None
    for word in text.split(" "):
        update = guard.feed(word + " ")
        shown += update.released
        if update.stop is not None:
            stop = update.stop
            break
    assert stop is not None and stop.event.index == 2 and stop.event.token_id == tokens["input_ids"][2]
    third_token_end = tokens["offset_mapping"][2][1]
    assert stop.char_start == third_token_start and stop.token_text == text[third_token_start:third_token_end]
    assert stop.notice == STOP_NOTICE
    if hold_back:
        assert shown == text[:third_token_start] and stop.leaked_chars == 0
    else:
        # Everything before the stopping delta was released on arrival, ahead of its score: " flour " leaked.
        assert shown == "Mix the flour " and stop.leaked_chars == len(shown) - third_token_start == 7
    assert stop.released_chars == len(shown)
    later = guard.feed("more text")
    assert later.released == "" and later.stopped and later.stop is None and later.scores == []
    assert guard.state.closed
    end = guard.finish()
    assert end.released == "" and end.finished
    with pytest.raises(RuntimeError, match="guard is finished"):
        guard.feed("x")


def test_feed_many_scores_like_separate_guards(scm, smol_tokenizer):
    monitor = StreamingMonitor(scm, smol_tokenizer, rule=DelayK(10**9))
    guards = [TextStreamGuard(monitor, prompt) for prompt in ("a", "b c", "d")]
    singles = [TextStreamGuard(StreamingMonitor(scm, smol_tokenizer, rule=DelayK(10**9)), p) for p in ("a", "b c", "d")]
    together, apart = [[] for _ in guards], [[] for _ in guards]
    rng = random.Random(2)
    streams = [_chunks(text, rng) for text in TEXTS]
    for step in range(max(map(len, streams))):
        deltas = [s[step] if step < len(s) else "" for s in streams]
        for i, update in enumerate(feed_many(guards, deltas)):
            together[i] += update.scores
        for i, (single, delta) in enumerate(zip(singles, deltas)):
            apart[i] += single.feed(delta).scores
    for a, b in zip(together, apart):
        assert len(a) == len(b) > 10 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5


def test_bad_deltas_raise_clear_errors(scm, smol_tokenizer):
    guard = _guard(scm, smol_tokenizer)
    with pytest.raises(TypeError, match="must be str, bytes or None"):
        guard.feed(42)
    guard.feed("é".encode()[:1])
    with pytest.raises(ValueError, match="incomplete"):
        guard.feed("x")
    monitor = StreamingMonitor(scm, None)
    with pytest.raises(ValueError, match="needs a monitor with a tokenizer"):
        TextStreamGuard(monitor, "hi")


# ------------------------------------------------------------------------------------------- transactions (issue 11)


def _flag_guards(model, tokenizer, n=2, **monitor):
    monitor_ = StreamingMonitor(model, tokenizer, **(monitor or {"theta": 0.0, "k": 1}))
    return monitor_, [TextStreamGuard(monitor_, "Tell me.") for _ in range(n)]


SENTENCE = "The quick brown fox jumps over the lazy dog again and again."


def test_a_failed_feed_many_releases_nothing_and_leaves_every_guard_usable(flag_everything_scm, smol_tokenizer):
    monitor, (first, second) = _flag_guards(flag_everything_scm, smol_tokenizer)
    with pytest.raises(TypeError, match="must be str, bytes or None, got int") as raised:
        feed_many([first, second], [SENTENCE, 42])
    # Before the fix the first guard's re-tokeniser had advanced: this feed released the sentence, unscored.
    update = first.feed("")
    assert update.released == "" and update.token_ids == [] and first.text == "" and first.state.n_response_tokens == 0
    assert str(raised.value).startswith("guard 1 (stream 1): ")  # the message names the guard of the batch
    with pytest.raises(ValueError, match="appears twice"):
        feed_many([first, first], ["a", "b"])
    with pytest.raises(ValueError, match="appears twice"):
        finish_many([second, second])
    assert first.text == second.text == "" and first.released_chars == second.released_chars == 0
    # Both guards work afterwards, and stop where a fresh guard stops (every token is flagged: at the first one).
    updates = feed_many([first, second], [SENTENCE, SENTENCE])
    assert [u.stop.event.index for u in updates] == [0, 0] and [u.released for u in updates] == ["", ""]


def test_a_model_failure_inside_the_push_changes_no_guard(scm, smol_tokenizer, monkeypatch):
    monitor = StreamingMonitor(scm, smol_tokenizer, rule=DelayK(10**9))
    guard = TextStreamGuard(monitor, "Tell me.")
    guard.feed("Hello there, ")
    before = (guard.released_chars, guard.retokenizer.committed_chars, guard.state.length, guard.text)
    real = monitor._run_step
    monkeypatch.setattr(monitor, "_run_step", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    with pytest.raises(RuntimeError, match="device lost"):
        guard.feed("general Kenobi. You are a bold one.")
    assert (guard.released_chars, guard.retokenizer.committed_chars, guard.state.length, guard.text) == before
    monkeypatch.setattr(monitor, "_run_step", real)
    guard.feed("general Kenobi. You are a bold one.")  # the retry
    final = guard.finish()
    assert guard.released_text == "Hello there, general Kenobi. You are a bold one." and final.finished
    expected = smol_tokenizer("Hello there, general Kenobi. You are a bold one.", add_special_tokens=False)
    assert guard.state.n_response_tokens == len(expected["input_ids"])


def test_a_stream_beyond_the_maximum_length_is_refused_and_releases_nothing(smol_tokenizer):
    torch.manual_seed(0)
    short = SCMModel(SCMConfig(backbone_config=tiny_llama_config(smol_tokenizer, 64).to_dict())).eval()
    guard = TextStreamGuard(StreamingMonitor(short, smol_tokenizer, rule=DelayK(10**9)), "Hi")
    guard.feed("A few words first. ")
    shown = guard.released_text
    with pytest.raises(StreamLengthError, match="beyond the model's maximum of 64") as raised:
        guard.feed("word " * 80)
    assert guard.released_text == shown and guard.text == "A few words first. "
    assert "nothing of this call was released" in str(raised.value)
    # Before the fix, finish() then released all 400 characters with 2 tokens scored.
    final = guard.finish()
    assert guard.released_text == "A few words first. " and final.finished
    assert guard.state.n_response_tokens == len(smol_tokenizer("A few words first. ")["input_ids"])


def test_a_lone_surrogate_is_refused_and_the_guard_still_works(scm, smol_tokenizer):
    guard = _guard(scm, smol_tokenizer)
    guard.feed("ok ")
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at character 2"):
        guard.feed("ab\ud800c")
    guard.feed("and more")
    assert guard.finish().finished and guard.released_text == "ok and more"


# ------------------------------------------------------------------------------------------- hostile text (issue 11)


MENTIONS = "Reply, then write <|im_end|> and <|endoftext|>, or <|im_start|>user, <tool_call> and <|fim_prefix|>."


@pytest.mark.parametrize("which", ["smol_tokenizer", "qwen_tokenizer"])
def test_special_token_strings_are_text_whatever_the_chunking(which, request):
    tokenizer = request.getfixturevalue(which)
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(tokenizer).to_dict())).eval()
    monitor = StreamingMonitor(model, tokenizer, rule=DelayK(10**9))
    monitored = {}
    chunkings = {"whole": [MENTIONS], "characters": list(MENTIONS), "random": _chunks(MENTIONS, random.Random(4))}
    for name, pieces in chunkings.items():
        guard = TextStreamGuard(monitor, "p")
        ids = [t for piece in pieces for t in guard.feed(piece).token_ids] + guard.finish().token_ids
        monitored[name] = ids
    assert monitored["whole"] == monitored["characters"] == monitored["random"]
    assert not set(tokenizer.added_tokens_decoder) & set(monitored["whole"])  # never a control token
    assert tokenizer.decode(monitored["whole"]) == MENTIONS


@pytest.mark.parametrize("text", ["a\u0301\u0323 x", "e\u0301 and o\u0308\u0323 then \u1100\u1161\u11a8 ok",
                                  "\u212b \ufb01 \u0f73 ka\u0323\u0302\u0301 x"])
def test_normalisation_never_releases_an_unscored_character(qwen_tokenizer, text):
    # Qwen2.5 normalises to NFC: combining marks out of canonical order are reordered and composed.
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(qwen_tokenizer).to_dict())).eval()
    monitor = StreamingMonitor(model, qwen_tokenizer, rule=DelayK(10**9))
    whole = qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
    normalized = qwen_tokenizer.backend_tokenizer.normalizer.normalize_str(text)
    for pieces in ([text], list(text)):
        guard = TextStreamGuard(monitor, "p")
        scored, released = [], ""
        for piece in pieces:
            update = guard.feed(piece)
            scored += update.token_ids
            released += update.released
            assert text.startswith(released)
            # The released text's normal form lies within the text of the scored tokens.
            covered = qwen_tokenizer.decode(scored)
            assert normalized.startswith(covered)
            assert covered.startswith(unicodedata.normalize("NFC", released))
        final = guard.finish()
        assert scored + final.token_ids == whole and released + final.released == text
    # The case in one chunk: "a" + U+0301 + U+0323 must not be released with only U+1EA1 scored.
    guard = TextStreamGuard(monitor, "p")
    update = guard.feed("a\u0301\u0323 x")
    assert update.released == "" and guard.finish().released == "a\u0301\u0323 x"


def test_many_guards_start_in_one_batched_forward(scm, smol_tokenizer, monkeypatch):
    monitor = StreamingMonitor(scm, smol_tokenizer, rule=DelayK(10**9))
    widths = []
    real = monitor._run_step

    def recording(cache, ids, *args):
        widths.append(tuple(ids.shape))
        return real(cache, ids, *args)

    monkeypatch.setattr(monitor, "_run_step", recording)
    guards = start_guards(monitor, ["a", "b c", "d"], hold_back=False)
    assert len(widths) == 1 and widths[0][0] == 3 and [g.hold_back for g in guards] == [False] * 3
    assert guards[1].state.prompt_length == len(monitor.encode_prompt("b c"))
    guards[0].feed("x y z w")
    assert guards[0].state.n_response_tokens > 0
    with pytest.raises(ValueError, match="open stream of this monitor"):
        TextStreamGuard(monitor, state=guards[0].state)


def test_token_texts_and_scored_chars_say_what_was_scored(qwen_tokenizer):
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(qwen_tokenizer).to_dict())).eval()
    guard = TextStreamGuard(StreamingMonitor(model, qwen_tokenizer, rule=DelayK(10**9)), "p")
    update = guard.feed("Hi 😀 o\u0308\u0323 ok then")
    # Scored: "Hi", " 😀", " ", "ọ" (U+1ECD, NFC) and U+0308 in two byte-level tokens (the character goes to the
    # last of them); " ok then" is held back.
    assert update.token_texts == ["Hi", " \U0001f600", " ", "\u1ecd", "", "\u0308"]
    assert len(update.token_texts) == len(update.scores) == 6
    # In raw characters: the 3 raw characters o, U+0308, U+0323 became 2 normalised ones (U+1ECD U+0308).
    assert guard.scored_chars == len("Hi 😀 o\u0308\u0323") and guard.unscored_text == " ok then"
    assert guard.retokenizer.committed_chars == guard.scored_chars == guard.retokenizer.committed_normalized + 1
    assert "".join(guard.finish().token_texts) == " ok then" and guard.unscored_text == ""


def test_raw_token_texts_cut_the_released_text_so_a_display_can_colour_all_of_it(qwen_tokenizer):
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(qwen_tokenizer).to_dict())).eval()
    guard = TextStreamGuard(StreamingMonitor(model, qwen_tokenizer, rule=DelayK(10**9)), "p")
    update = guard.feed("Hi 😀 o\u0308\u0323 ok then")
    # The same six tokens, cut in the text as received: the combining sequence o + U+0308 + U+0323 (one segment
    # for the normaliser) is shared by the three tokens that start in it and goes whole to the last of them.
    assert update.released == "Hi 😀 o\u0308\u0323"
    assert update.raw_token_texts == ["Hi", " \U0001f600", " ", "", "", "o\u0308\u0323"]
    final = guard.finish()
    assert final.released == " ok then" and final.raw_token_texts == [" ok", " then"]


def test_raw_token_texts_stop_at_the_stop_token(flag_everything_scm, smol_tokenizer):
    guard = TextStreamGuard(StreamingMonitor(flag_everything_scm, smol_tokenizer, rule=DelayK(3)), "p")
    update = guard.feed("One two three four five six")
    # The third flagged token stops the stream: the two before it are released, the stop token and later ones not.
    assert update.stop is not None and update.stop.event.index == 2
    assert update.released == "One two"
    assert update.raw_token_texts == ["One", " two", "", ""]
