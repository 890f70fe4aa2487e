"""results/realmix/errors_by_source.py: errors counted per (source, class) at each folder's leak-free points."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.tiny_text_data import write_fineharm_folder
from utils.data.fineharm import response_label
from utils.io_utils import DataFormatError, write_json
from utils.evaluation.loso import source_key
from utils.evaluation.predictions import make_record, write_predictions

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("errors_by_source", ROOT / "results" / "realmix" / "errors_by_source.py")
errors_by_source = importlib.util.module_from_spec(_spec)
sys.modules["errors_by_source"] = errors_by_source  # dataclasses look their module up there
_spec.loader.exec_module(errors_by_source)


def _eval_folder(folder: Path, labels: list[int], flagged: set[int]) -> Path:
    """A partial-mode folder whose token scorer flags exactly the records in ``flagged`` (at theta 0.5, k 2) and
    whose whole-response score flags the same ones."""
    records = [make_record(f"test-{i:05d}", y, 1, [0, 0, 0],
                           scores={"token": [0.9, 0.9, 0.1] if i in flagged else [0.9, 0.1, 0.1]},
                           full_score=0.8 if i in flagged else 0.2) for i, y in enumerate(labels)]
    write_predictions(folder, "test", records, {"script": "test"})
    point = {"theta": 0.5, "k": 2, "counting": "all"}
    write_json(folder / "summary.json", {"partial": {"token": {"leak_free": point, "leak_free_early": point}},
                                         "full": {"leak_free": {"theta": 0.5}}})
    return folder


def test_errors_are_counted_per_source_and_class(tmp_path):
    realmix = write_fineharm_folder(tmp_path / "realmix", {"test": 12})
    test = json.loads((realmix / "test_new.json").read_text())
    labels = [response_label(r) for r in test]
    sources = [source_key(r, "x") for r in test]
    harmful, benign = labels.index(1), labels.index(0)
    # one harmful response missed, one benign stopped, the rest right
    flagged = {i for i, y in enumerate(labels) if y and i != harmful} | {benign}
    folder = _eval_folder(tmp_path / "eval", labels, flagged)
    table = errors_by_source.main(errors_by_source.Arguments(runs=[f"m={folder}"], realmix_dir=str(realmix),
                                                             output_file=str(tmp_path / "t.md")))
    assert (tmp_path / "t.md").read_text() == table
    assert "| m token best (θ0.5 k2) | m token early (θ0.5 k2) | m full (θ0.5) |" in table
    rows = {tuple(line.split(" | ")[:2]): line for line in table.splitlines()[2:]}
    assert rows[(f"| {sources[harmful]}", "harmful (missed)")].endswith(" | 1 | 1 | 1 |")
    assert rows[(f"| {sources[benign]}", "benign (stopped)")].endswith(" | 1 | 1 | 1 |")
    assert table.splitlines()[-1] == "| all | errors | 12 | 2 | 2 | 2 |"


def test_predictions_of_other_records_and_bad_names_are_refused(tmp_path):
    realmix = write_fineharm_folder(tmp_path / "realmix", {"test": 6})
    labels = [response_label(r) for r in json.loads((realmix / "test_new.json").read_text())]
    folder = _eval_folder(tmp_path / "eval", [1 - y for y in labels], set())
    with pytest.raises(DataFormatError, match="not .*test_new.json's records in order"):
        errors_by_source.error_table({"m": folder}, realmix)
    with pytest.raises(ValueError, match="given twice"):
        errors_by_source.main(errors_by_source.Arguments(runs=[f"m={folder}", f"m={folder}"], realmix_dir=str(realmix)))
