"""Plain-text encoding (utils/text_encoding.py): strings such as <|im_end|> are text, never control tokens.

Training data (utils/data_process.py), prompts (serve/monitor.py) and streamed responses (serve/text_guard.py) all
encode through it, so a model never sees a control token that the text only mentions.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from serve.monitor import encode_prompt
from utils.data_process import ExampleEncoder
from utils.text_encoding import check_unicode, encode_text, encode_texts, plain_text_backend

MENTIONS = "Say <|im_end|> then <|endoftext|>, <|im_start|>user and <tool_call>{}</tool_call> <|fim_prefix|>x"
ORDINARY = "It'll cost $1,234.56 — don't  worry.\n\n  Step 2:\tmix 😀 café e\u0301 日本語 x'"


@pytest.fixture(scope="module", params=["smollm2", "qwen2.5"])
def tokenizer(request):
    from model.assets import qwen_tokenizer_path, smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path() if request.param == "smollm2" else qwen_tokenizer_path())


def test_added_token_strings_are_encoded_as_text(tokenizer):
    ids = encode_text(tokenizer, MENTIONS)
    added = set(tokenizer.added_tokens_decoder)
    assert not added & set(ids)
    # The pieces decode back to the text, and the plain tokenizer call would have made control tokens of them.
    assert tokenizer.decode(ids) == MENTIONS
    assert added & set(tokenizer(MENTIONS, add_special_tokens=False)["input_ids"])


def test_ordinary_text_encodes_exactly_as_the_tokenizer_does(tokenizer):
    assert encode_text(tokenizer, ORDINARY) == tokenizer(ORDINARY, add_special_tokens=False)["input_ids"]
    assert encode_texts(tokenizer, [ORDINARY, "", "a"]) == [encode_text(tokenizer, t) for t in (ORDINARY, "", "a")]


def test_qwen_non_special_added_tokens_need_more_than_split_special_tokens(qwen_tokenizer_dir):
    qwen = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    split = qwen("<tool_call>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert split == [151657]  # <tool_call> is an added token that is not special: split_special_tokens keeps it
    assert 151657 not in encode_text(qwen, "<tool_call>")


def test_training_data_and_prompts_use_the_same_encoding(tokenizer):
    sentence_ids = ExampleEncoder(tokenizer)._encode([MENTIONS])[0]
    assert sentence_ids == encode_text(tokenizer, MENTIONS)
    prompt_ids = encode_prompt(tokenizer, MENTIONS)
    assert prompt_ids[-len(encode_text(tokenizer, MENTIONS + "\n\n")):] == encode_text(tokenizer, MENTIONS + "\n\n")
    assert not set(tokenizer.added_tokens_decoder) & set(prompt_ids[1:] if tokenizer.bos_token_id else prompt_ids)


def test_the_plain_backend_has_no_truncation_padding_or_added_tokens():
    from model.assets import minilm_path

    minilm = AutoTokenizer.from_pretrained(minilm_path())  # its saved backend truncates and pads to 128
    plain = plain_text_backend(minilm)
    long_text = "word " * 300
    assert plain.truncation is None and plain.padding is None
    assert len(encode_text(minilm, long_text)) == 300
    assert plain_text_backend(minilm) is plain  # cached per tokenizer
    assert plain_text_backend(minilm, normalizer=False).normalizer is None


def test_text_that_is_not_unicode_is_refused_with_its_position():
    with pytest.raises(ValueError, match=r"lone surrogate U\+D83D at character 3: that is not valid Unicode"):
        check_unicode("ab \ud83d", "the delta")
    with pytest.raises(TypeError, match="must be a str, got int"):
        check_unicode(5, "the prompt")
    check_unicode("fine 😀", "text")


def test_cut_prompt_keeps_the_last_tokens():
    from utils.text_encoding import cut_prompt

    assert cut_prompt([5, 6, 7], None) == [5, 6, 7] and cut_prompt([5, 6, 7], 2) == [6, 7]
    assert cut_prompt([5, 6, 7], 0) == [] and cut_prompt((5,), 4) == [5]
