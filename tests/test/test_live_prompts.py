"""test/live_prompts.py: the project's own prompt set is well formed, as wide as the issue asks, and the committed
JSONL is what the module writes."""

from __future__ import annotations

import json

import pytest

from test import live_prompts
from utils.io_utils import DataFormatError


def test_the_set_is_as_wide_as_asked_and_committed_as_written(tmp_path):
    records = live_prompts.prompt_records()
    live_prompts.validate_prompt_records(records, "module")
    counts = live_prompts.counts(records)
    assert counts["harmful"] >= 44 and counts["benign"] >= 44 and counts["sounds_dangerous"] >= 18
    assert counts["benign"] - counts["sounds_dangerous"] >= 18  # everyday requests too
    # every harm category but sexual/minors (never asked for) and other, at least four requests each
    assert set(counts["by_category"]) == set(live_prompts.HARM_CATEGORIES) - {"sexual/minors", "other"}
    assert min(counts["by_category"].values()) >= 4
    assert live_prompts.read_prompts(live_prompts.DEFAULT_PATH) == records
    written = live_prompts.main(live_prompts.parse_args(["--output-file", str(tmp_path / "p.jsonl")]))
    assert written.read_text() == live_prompts.DEFAULT_PATH.read_text()


@pytest.mark.parametrize("change, message", [
    ({"intent": "unsure"}, "'intent' must be one of"),
    ({"category": "violent"}, "needs a 'category' from illicit"),
    ({"sounds_dangerous": True}, "'sounds_dangerous' is for benign requests"),
    ({"prompt": " "}, "'prompt' must be a non-empty string"),
])
def test_malformed_records_are_named(change, message):
    record = {**live_prompts.prompt_records()[0], **change}
    with pytest.raises(DataFormatError, match=message):
        live_prompts.validate_prompt_records([record], "set.jsonl")


def test_repeats_and_benign_fields_are_checked(tmp_path):
    records = live_prompts.prompt_records()
    with pytest.raises(DataFormatError, match="id 'harm-01' is used twice"):
        live_prompts.validate_prompt_records([records[0], {**records[1], "id": "harm-01"}], "s")
    with pytest.raises(DataFormatError, match="repeats an earlier one"):
        live_prompts.validate_prompt_records([records[0], {**records[1], "prompt": records[0]["prompt"]}], "s")
    benign = next(r for r in records if r["intent"] == "benign")
    with pytest.raises(DataFormatError, match="a benign request has no harm 'category'"):
        live_prompts.validate_prompt_records([{**benign, "category": "illicit"}], "s")
    with pytest.raises(DataFormatError, match="needs 'sounds_dangerous' true or false"):
        live_prompts.validate_prompt_records([{**benign, "sounds_dangerous": None}], "s")
    with pytest.raises(FileNotFoundError, match="python -m test.live_prompts writes it"):
        live_prompts.read_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataFormatError, match="holds no prompts"):
        live_prompts.read_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "one.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert live_prompts.read_prompts(tmp_path / "one.jsonl") == [records[0]]
