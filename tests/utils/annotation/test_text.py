"""Tests for utils/annotation/text.py: spaCy sentences/words/POS, the notional-word rule and the refusal rule."""

from __future__ import annotations

import pytest

from utils.annotation.text import (
    DEFAULT_NOTIONAL_POS,
    SpacyModelError,
    check_pos_tags,
    is_refusal_or_disclaimer,
    load_spacy,
    propagate_labels,
    segment_responses,
    tokenise_sentences,
    word_labels,
)


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def test_responses_split_on_newlines_then_sentences(nlp):
    (sentences,) = segment_responses(nlp, ["Sure, here it is. First, get 3 pounds of nitrate.\n\n  \nI cannot help."],
                                     show_progress=False)
    assert [s.text for s in sentences] == ["Sure, here it is.", "First, get 3 pounds of nitrate.", "I cannot help."]
    assert sentences[1].words == ["First", ",", "get", "3", "pounds", "of", "nitrate", "."]
    assert sentences[1].pos == ["ADV", "PUNCT", "VERB", "NUM", "NOUN", "ADP", "NOUN", "PUNCT"]
    # Notional words of a harmful sentence are 1 (ADV, VERB, NUM, NOUN), function words and punctuation 0.
    assert word_labels(sentences[1].pos, True) == [1, 0, 1, 1, 1, 0, 1, 0]
    assert word_labels(sentences[1].pos, False) == [0] * 8
    assert word_labels(sentences[1].pos, True, ["NOUN"]) == [0, 0, 0, 0, 1, 0, 1, 0]


def test_empty_response_has_no_sentence_and_given_sentences_are_not_resplit(nlp):
    assert segment_responses(nlp, [" \n\n "], show_progress=False) == [[]]
    (given,) = tokenise_sentences(nlp, [["One. Two.", "..."]], show_progress=False)
    assert given[0].text == "One. Two." and given[0].words == ["One", ".", "Two", "."]
    assert given[1].words == ["..."]


def test_pos_tag_validation():
    assert check_pos_tags(["noun", "VERB"]) == ("NOUN", "VERB")
    assert DEFAULT_NOTIONAL_POS == ("NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM")
    with pytest.raises(ValueError, match="unknown Universal POS tag.*'NOUNS'"):
        check_pos_tags(["NOUNS"])


def test_missing_spacy_model_names_the_install_command():
    with pytest.raises(SpacyModelError, match="not installed.*pass --spacy-model"):
        load_spacy("no_such_spacy_model_xyz")


@pytest.mark.parametrize("sentence", [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for that.",
    "As an AI language model, I must point out the risks.",
    "Please note that this is illegal.",
    "However, it is important to note that hacking is a crime.",
    "* Disclaimer: use at your own risk.",
    "2. Note: these steps are hypothetical.",
    "This information is for educational purposes only.",
    "Sure? No, I won't assist with this.",
    "It’s important to remember that violence is never the answer.",
    "This is illegal and dangerous.",
])
def test_refusals_and_disclaimers_are_recognised(sentence):
    assert is_refusal_or_disclaimer(sentence)


@pytest.mark.parametrize("sentence", [
    "Sure, here is how to do it.",
    "First, buy the chemicals from a hardware store.",
    "Although it is illegal, you can pick the lock with a tension wrench.",
    "Step 2: Send the message to the victim.",
    "The guard cannot see the back door.",
    "Make sure nobody notices.",
])
def test_instructions_are_not_refusals(sentence):
    assert not is_refusal_or_disclaimer(sentence)


def test_propagation_from_the_response_label():
    sentences = ["Sure, here is how.", "Mix the two liquids.", "Please note that this is dangerous."]
    assert propagate_labels(sentences, True) == [1, 1, 0]
    assert propagate_labels(sentences, True, refusal_rule=False) == [1, 1, 1]
    assert propagate_labels(sentences, False) == [0, 0, 0]
