"""utils/data/categories.py: the shared taxonomy, its order, and category flags."""

import pytest

from utils.data.categories import OPENAI_CATEGORIES, TAXONOMY, ordered_categories, parse_category_list


def test_taxonomy_keeps_openai_keys_first_and_adds_the_extras():
    assert TAXONOMY[:13] == OPENAI_CATEGORIES
    assert "illicit/violent" in OPENAI_CATEGORIES and "self-harm/intent" in OPENAI_CATEGORIES
    assert TAXONOMY[13:] == ("privacy", "misinformation", "specialised-advice", "other")


def test_ordered_categories_is_taxonomy_order_whatever_the_input_order():
    assert ordered_categories(["other", None, "illicit", "hate", "illicit"]) == ["hate", "illicit", "other"]
    assert ordered_categories(["zeta", "harassment", "alpha"]) == ["harassment", "alpha", "zeta"]


def test_parse_category_list_names_unknown_ones_and_keeps_known_order():
    known = ["hate", "illicit", "self-harm"]
    assert parse_category_list("self-harm, illicit", known, "--block-categories") == ["illicit", "self-harm"]
    assert parse_category_list("all", known, "--block-categories") == known
    assert parse_category_list("", known, "--block-categories") == []
    with pytest.raises(ValueError, match=r"--block-categories: unknown category bombs; known: hate, illicit"):
        parse_category_list("bombs", known, "--block-categories")
