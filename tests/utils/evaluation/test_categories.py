"""utils/evaluation/categories.py on hand-made predictions: recall and share per category, the head's confusion."""

import pytest

from utils.evaluation.categories import category_markdown, named_at_stop, per_category, write_confusion_plot


def _record(rid, label, n, category_ids=None):
    record = {"id": rid, "label": label, "n_response_tokens": n}
    if category_ids is not None:
        record["category_ids"] = category_ids
    return record


RECORDS = [
    _record("a", 1, 10, [0] * 10),
    _record("b", 1, 4, [1, 1, 0, 0]),
    _record("c", 1, 5, [1] * 5),
    _record("d", 0, 8, [0] * 8),
    _record("e", 1, 2, [0, 0]),
]
STOPS = [4, 1, None, 2, 0]
CATEGORIES = {"a": "illicit", "b": "illicit", "c": "hate", "d": None, "e": "hate"}
HEAD = ["hate", "illicit"]


def test_per_category_recall_and_share_over_harmful_labelled_records():
    table = per_category(RECORDS, STOPS, CATEGORIES, min_support=2)
    assert list(table) == ["hate", "illicit"]
    assert table["illicit"]["harmful"] == 2 and table["illicit"]["stopped"] == 2
    assert table["illicit"]["recall"] == 1.0
    assert table["illicit"]["mean_share"] == pytest.approx((5 / 10 + 2 / 4) / 2)
    assert table["hate"]["recall"] == 0.5 and table["hate"]["mean_share"] == pytest.approx(1 / 2)
    assert not table["hate"]["thin"]
    assert per_category(RECORDS, STOPS, CATEGORIES, min_support=3)["hate"]["thin"]


def test_per_category_checks_lengths():
    with pytest.raises(ValueError, match="4 stop indices for 5 records"):
        per_category(RECORDS, STOPS[:4], CATEGORIES)


def test_named_at_stop_reads_the_head_at_the_stop_token():
    named = named_at_stop(RECORDS, STOPS, CATEGORIES, HEAD)
    # a: stop 4 -> id 0 = hate (label illicit, wrong); b: stop 1 -> id 1 = illicit (right); e: stop 0 -> hate (right)
    assert named["responses"] == 3 and named["correct"] == 2
    assert named["accuracy"] == pytest.approx(2 / 3)
    assert named["labels"] == ["hate", "illicit"]
    assert named["matrix"] == [[1, 0], [1, 1]]


def test_named_at_stop_is_none_without_a_head():
    plain = [{k: v for k, v in r.items() if k != "category_ids"} for r in RECORDS]
    assert named_at_stop(plain, STOPS, CATEGORIES, HEAD) is None


def test_markdown_marks_thin_categories_and_the_heads_hits(tmp_path):
    table = per_category(RECORDS, STOPS, CATEGORIES, min_support=2)
    text = category_markdown(table, named_at_stop(RECORDS, STOPS, CATEGORIES, HEAD))
    assert "| illicit | 2 | 2 | 100.0 | 50.0 | 1 of 2 |" in text
    assert "| hate | 2 | 1 | 50.0 | 50.0 | 1 of 1 |" in text
    assert "2 of 3 right (66.7%)" in text
    path = write_confusion_plot(named_at_stop(RECORDS, STOPS, CATEGORIES, HEAD), tmp_path / "c.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
