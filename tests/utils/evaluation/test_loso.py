"""utils/evaluation/loso.py: per-source counts, the held-out folders (train/val without the source, test = all of its records),
and the table's handling of sources with too few responses of a class."""

from __future__ import annotations

import json
import os

import pytest

from utils.evaluation import loso
from utils.evaluation.outputs import REPO_ROOT
from utils.io_utils import DataFormatError

from tests.tiny_text_data import text_record, write_fineharm_folder


def _record(source: str, sub: str, harmful: bool) -> dict:
    key = "attack" if source == "jbb" else "model"
    return text_record("Q?", ["Hide the weapon."] if harmful else ["I cannot help."], harmful,
                       {"source": source, key: sub})


def test_counts_and_held_out_folds():
    data = {"train": [_record("jbb", "GCG", True), _record("xstest", "gpt4", False), _record("jbb", "GCG", False)],
            "val": [_record("xstest", "gpt4", False), _record("jbb", "GCG", True)],
            "test": [_record("jbb", "GCG", True), _record("xstest", "gpt4", True)]}
    counts = loso.source_counts(data)
    assert counts["jbb-GCG"] == {"train": {"benign": 1, "harmful": 1}, "val": {"benign": 0, "harmful": 1},
                                 "test": {"benign": 0, "harmful": 1}, "all": {"benign": 1, "harmful": 3}}
    assert counts["xstest-gpt4"]["all"] == {"benign": 2, "harmful": 1}
    folds, provenance = loso.held_out_split(data, "jbb-GCG")
    assert [len(folds[s]) for s in ("train", "val", "test")] == [1, 1, 4]
    assert provenance == [{"split": "train", "index": 0}, {"split": "train", "index": 2},
                          {"split": "val", "index": 1}, {"split": "test", "index": 0}]
    assert all(loso.source_key(r, "x") == "xstest-gpt4" for r in folds["train"] + folds["val"])


def test_source_level_holds_out_a_whole_source_and_test_splits_keep_its_test_small():
    data = {"train": [_record("jbb", "GCG", True), _record("jbb", "JBC", False), _record("xstest", "gpt4", False)],
            "val": [_record("jbb", "DSN", True), _record("xstest", "gpt4", False)],
            "test": [_record("jbb", "GCG", False), _record("xstest", "mistral", True)]}
    counts = loso.source_counts(data, "source")
    assert list(counts) == ["jbb", "xstest"]
    assert counts["jbb"]["all"] == {"benign": 2, "harmful": 2}
    folds, provenance = loso.held_out_split(data, "jbb", "source", ["test"])
    assert [len(folds[s]) for s in ("train", "val", "test")] == [1, 1, 1]  # jbb's train/val records: nowhere
    assert provenance == [{"split": "test", "index": 0}]
    assert all(r["meta"]["source"] == "xstest" for r in folds["train"] + folds["val"])
    with pytest.raises(DataFormatError, match="needs 'source'"):
        loso.source_key({"meta": {"model": "gpt4"}}, "test_new.json, record 3", "source")


def test_build_at_source_level_records_its_level_and_test_splits(tmp_path):
    source = write_fineharm_folder(tmp_path / "in")
    manifest = loso.main(*loso.parse_args(["build", "--input-dir", str(source), "--output-dir", str(tmp_path / "out"),
                                           "--level", "source", "--test-splits", "test"]))
    assert manifest["level"] == "source" and manifest["test_splits"] == ["test"]
    assert set(manifest["held_out"]) == {r["meta"]["source"] for r in
                                         json.loads((source / "train_new.json").read_text())}
    for held_out, info in manifest["held_out"].items():
        assert info["sizes"]["test"] == manifest["counts"][held_out]["test"]["benign"] + \
            manifest["counts"][held_out]["test"]["harmful"]
    with pytest.raises(ValueError, match="--test-splits"):
        loso.build(loso.BuildArguments(input_dir=str(source), output_dir=str(tmp_path / "o2"), test_splits="dev"))


def test_build_writes_fineharm_folders(tmp_path):
    source = write_fineharm_folder(tmp_path / "in")
    manifest = loso.main(*loso.parse_args(["build", "--input-dir", str(source), "--output-dir", str(tmp_path / "out"),
                                           "--sources", "jbb-GCG,xstest-gpt4"]))
    assert list(manifest["held_out"]) == ["jbb-GCG", "xstest-gpt4"]
    folder = tmp_path / "out" / "jbb-GCG"
    test = json.loads((folder / "test_new.json").read_text())
    total = sum(manifest["counts"]["jbb-GCG"]["all"].values())
    assert len(test) == total == manifest["held_out"]["jbb-GCG"]["sizes"]["test"]
    assert all(r["meta"]["attack"] == "GCG" for r in test)
    assert not any(r["meta"].get("attack") == "GCG" for r in json.loads((folder / "train_new.json").read_text()))
    assert loso.list_sources(loso.ListArguments(folders=str(tmp_path / "out"))) == ["jbb-GCG", "xstest-gpt4"]
    with pytest.raises(ValueError, match="unknown source.*jbb-XYZ"):
        loso.build(loso.BuildArguments(input_dir=str(source), output_dir=str(tmp_path / "o2"), sources="jbb-XYZ"))
    # another subset into the same folder replaces it (folders are derived data); a foreign file still stops it
    loso.build(loso.BuildArguments(input_dir=str(source), output_dir=str(tmp_path / "out"), sources="jbb-JBC"))
    assert loso.list_sources(loso.ListArguments(folders=str(tmp_path / "out"))) == ["jbb-JBC"]
    assert not (tmp_path / "out" / "jbb-GCG").exists()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        loso.build(loso.BuildArguments(input_dir=str(source), output_dir=str(tmp_path / "out"), sources="jbb-GCG"))


def test_records_without_source_metadata_are_refused():
    with pytest.raises(DataFormatError, match="record 3: field 'meta' needs 'source'"):
        loso.source_key({"meta": {"source": "jbb"}}, "train_new.json, record 3")


def _summary(n_benign: int, n_harmful: int) -> dict:
    report = {"n_benign": n_benign, "n_harmful": n_harmful, "macro_f1": 0.8, "harmful_recall": 0.7, "far": 0.1,
              "delay": {"harmful": {"mean_share": 0.25}}}
    return {"model": {"task": "lexical"}, "select_split": "val",
            "full": {"leak_free": {"theta": 0.6, "report": {k: v for k, v in report.items() if k != "delay"}}},
            "partial": {"holistic": {"leak_free": {"theta": 0.5, "k": 3, "report": report},
                                     "leak_free_early": {"theta": 0.6, "k": 1, "report": report}}}}


def test_table_hides_metrics_of_classes_too_small(tmp_path):
    for source, counts in (("jbb-DSN", (11, 189)), ("xstest-gpt4", (449, 1))):
        run = tmp_path / "eval" / source / "lexical-partial"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(_summary(*counts)))
    text = loso.table(loso.TableArguments(runs_dir=str(tmp_path / "eval"), output_dir=str(tmp_path / "out")))
    written = json.loads((tmp_path / "out" / "loso.json").read_text())
    # the runs folder as the reports name paths: relative to the repository, never this machine's absolute path
    assert written["runs_dir"] == os.path.relpath(tmp_path / "eval", REPO_ROOT)
    rows = written["rows"]
    assert [(r["held_out"], r["mode"], r["rule"]) for r in rows[:3]] == [
        ("jbb-DSN", "full", "leak_free"), ("jbb-DSN", "partial", "leak_free"),
        ("jbb-DSN", "partial", "leak_free_early")]
    dsn_partial, gpt4_full = rows[1], rows[3]
    assert (dsn_partial["macro_f1"], dsn_partial["harmful_recall"], dsn_partial["far"], dsn_partial["mean_share"]) \
        == (0.8, 0.7, 0.1, 0.25)
    assert (gpt4_full["macro_f1"], gpt4_full["harmful_recall"], gpt4_full["far"], gpt4_full["mean_share"]) \
        == (None, None, 0.1, None)
    row = "| xstest-gpt4 | 449 | 1 | lexical-partial | partial* (holistic) | best | 0.5 | 3 | – | – | 10.00 | – |"
    assert row in text
    # means over the sources where a metric exists: FAR over both, macro-F1 over DSN only
    assert "| lexical-partial | partial* (holistic) | early | 2 | 80.00 | 70.00 | 10.00 | 25.00 |" in text
    with pytest.raises(FileNotFoundError, match="run scripts/run-loso.sh first"):
        loso.collect_rows(tmp_path / "nothing")
