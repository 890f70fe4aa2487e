"""utils/evaluation/report.py: Table-2-style rows and markdown from hand-made summaries; merging runs (each run once, full rows
of a partial run left to the full run); the CLI and its wrapper."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from utils.io_utils import DataFormatError
from utils.metrics import PROTOCOLS, full_protocols, partial_protocols
from utils.evaluation.report import load_summary, main, merged_report, parse_args, rows_table, run_report, summary_rows

REPO = Path(__file__).resolve().parents[3]


def rec(rid, label, scores, full):
    return {"id": rid, "label": label, "n_response_tokens": len(scores), "token_labels": [0] * len(scores),
            "scores": {"token": scores}, "full_score": full}


TEST = [rec("t-h1", 1, [0.9], 0.9), rec("t-h2", 1, [0.9, 0.6], 0.4), rec("t-b1", 0, [0.6, 0.6], 0.3),
        rec("t-b2", 0, [0.1], 0.6)]
VAL = [rec("v-h1", 1, [0.6, 0.6], 0.7), rec("v-h2", 1, [0.7, 0.55, 0.1], 0.8), rec("v-b1", 0, [0.9], 0.2),
       rec("v-b2", 0, [0.2], 0.65)]


def make_summary(task="scm", name="ckpt", with_partial=True, with_full=True, data_dir="data"):
    summary = {
        "script": "test.test_qwen_partial" if with_partial else "test.test_qwen_full",
        "model": {"task": task, "name": name, "path": f"runs/{name}", "backbone_type": "qwen2"},
        "data": {"data_dir": data_dir, "max_length": 4096,
                 "splits": {"val": {"examples": 4, "harmful": 2, "response_tokens": 7, "truncated": 0},
                            "test": {"examples": 4, "harmful": 2, "response_tokens": 6, "truncated": 1}}},
        "eval_split": "test",
        "selection_tolerance": 0.01,
        "protocols": PROTOCOLS,
        "full": full_protocols(TEST, VAL, (0.5, 0.6, 0.7, 0.8)) if with_full else None,
        "partial": {"token": partial_protocols(TEST, VAL, "token", (0.5, 0.8), max_k=3)} if with_partial else {},
        "runtime": {"device": "cpu", "dtype": "float32", "batch_size": 8, "inference_seconds": {"test": 0.5}},
    }
    summary["rows"] = summary_rows(summary)
    return summary


FIFTY = " | ".join(["50.00"] * 7)
EXPECTED_ROWS = [
    "| SCM (ckpt) | full | fixed | 0.5 | – | 4 | " + FIFTY + " | – | – | – | – |",
    # Validation picks theta 0.7 (the only perfect one there); on test it flags t-h1 only.
    "| SCM (ckpt) | full | leak-free | 0.7 | – | 4 | 66.67 | 100.00 | 80.00 | 100.00 | 50.00 | 66.67 | 73.33 "
    "| – | – | – | – |",
    # Leak-free: (0.5, 2) from validation; on test tp = fp = tn = fn = 1; t-h2 stops at its last token (100%), t-h1
    # is never stopped (100% in "Seen (all)").
    "| SCM (ckpt) | partial* (token) | leak-free | 0.5 | 2 | 4 | " + FIFTY + " | 100.00 | 100.00 | 0.00 | 0.00 |",
    # Nothing else is within one point on validation: the early rule picks the same point.
    "| SCM (ckpt) | partial* (token) | leak-free, early (≤1 pt) | 0.5 | 2 | 4 | " + FIFTY
    + " | 100.00 | 100.00 | 0.00 | 0.00 |",
    # (0.5, 2) stops no benign validation response (v-b1 has one flagged token): within the 2% budget, and the best.
    "| SCM (ckpt) | partial* (token) | leak-free, budget (≤2% benign stops) | 0.5 | 2 | 4 | " + FIFTY
    + " | 100.00 | 100.00 | 0.00 | 0.00 |",
]
EXPECTED_PAPER_ROWS = [
    # theta 0.5: k = 1 (harmful F1 4/5) flags t-h1, t-h2, t-b1; t-h1 stops at 1/1 token, t-h2 at 1/2: 75% seen.
    "| SCM (ckpt) | partial* (token) | 0.5 | 1 | 4 | 100.00 | 50.00 | 66.67 | 66.67 | 100.00 | 80.00 | 73.33 "
    "| 75.00 | 75.00 | 0.00 | 0.00 |",
    # theta 0.8: k = 1 is perfect on test.
    "| SCM (ckpt) | partial* (token) | 0.8 | 1 | 4 | " + " | ".join(["100.00"] * 7)
    + " | 75.00 | 75.00 | 0.00 | 0.00 |",
]


def test_rows_table_pinned():
    rows = make_summary()["rows"]
    assert [(r["mode"], r["protocol"], r["theta"], r["k"]) for r in rows] == [
        ("full", "fixed", 0.5, None), ("full", "leak-free", 0.7, None), ("partial", "leak-free", 0.5, 2),
        ("partial", "leak-free-early", 0.5, 2), ("partial", "leak-free-budget", 0.5, 2), ("partial", "paper", 0.5, 1),
        ("partial", "paper", 0.8, 1)]
    assert [r["counting"] for r in rows[2:]] == ["all", "all", "all", "labelled", "labelled"]
    assert rows[4]["max_benign_stop_rate"] == 0.02 and rows[4]["benign_stop_rate"] == 0.5  # t-b1 is stopped on test
    table = rows_table([r for r in rows if r["protocol"] != "paper"]).splitlines()
    assert table[0] == ("| Model | Mode | Protocol | θ | k | n | Benign P | Benign R | Benign F1 | Harmful P "
                        "| Harmful R | Harmful F1 | Macro-F1 | Seen | Seen (all) | ≤10% | ≤30% |")
    assert table[2:] == EXPECTED_ROWS
    paper = rows_table([r for r in rows if r["protocol"] == "paper"], with_protocol=False).splitlines()
    assert paper[0].startswith("| Model | Mode | θ | k | n | Benign P |") and paper[2:] == EXPECTED_PAPER_ROWS


def test_lexical_floor_label():
    rows = make_summary("lexical", "tfidf")["rows"]
    assert {r["model"] for r in rows} == {"Lexical floor (TF-IDF + LR)"}


def test_run_report_sections():
    summary = make_summary()
    summary["plots"] = ["macro-f1-vs-k-token.png"]
    text = run_report(summary)
    assert "# Evaluation: SCM `ckpt`" in text
    assert "| test | 4 | 2 | 6 | 1 |" in text
    assert all(row in text for row in EXPECTED_ROWS + EXPECTED_PAPER_ROWS)
    assert text.index(EXPECTED_ROWS[-1]) < text.index("### Paper protocol") < text.index(EXPECTED_PAPER_ROWS[0])
    assert "within 1 macro-F1 point of the best" in text and "tokens labelled -100" in text
    assert "## Full detection by threshold" in text and "| 0.7 | 100.00 |" in text  # val at 0.7 is perfect
    assert "## Partial detection, `token` scorer (reported on `test`)" in text
    # per theta: 0.5 -> paper k 1 (harmful F1 80, macro (4/5 + 2/3) / 2 = 73.33, seen 75), leak-free k 2 (val 100,
    # test 50, seen 100)
    assert "| 0.5 | 1 | 80.00 | 73.33 | 75.00 | 2 | 100.00 | 50.00 | 100.00 |" in text
    assert "harmful responses: 1 of 2 stopped (1 not stopped)" in text
    assert "mean 100.00% (all, a missed one as 100%)" in text
    assert "0-10%: 0, 10-20%: 0" in text
    # The frontier on test: (0.8, 1) is perfect at 75% seen, nothing earlier does better.
    assert "| 75.00 | 100.00 | 0.8 | 1 |" in text
    assert "![macro-f1-vs-k-token](macro-f1-vs-k-token.png)" in text


def _write_run(folder: Path, summary: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_merged_report_shows_each_run_once(tmp_path):
    scm = _write_run(tmp_path / "scm", make_summary())
    again = _write_run(tmp_path / "scm-again", make_summary())
    encoder = _write_run(tmp_path / "enc-full", make_summary("encoder-full", "enc", with_partial=False))
    # The encoder's partial run (also reporting full detection) on the same checkpoint and data, given with
    # another spelling of the data path.
    encoder_partial = _write_run(tmp_path / "enc-partial", make_summary("encoder-full", "enc", data_dir="./data/"))
    # Another data set: a different run, its full rows stay.
    other_data = _write_run(tmp_path / "enc-other", make_summary("encoder-full", "enc", data_dir="other"))
    text = merged_report([scm, again, encoder, encoder_partial, other_data])
    main, paper = text.split("## Paper protocol")
    rows = [line for line in main.splitlines() if line.startswith("| ") and "(" in line.split("|")[1]]
    assert rows[:5] == EXPECTED_ROWS  # the second SCM folder adds nothing
    modes = [(r.split("|")[1].strip(), r.split("|")[2].strip(), r.split("|")[3].strip()) for r in rows[5:]]
    partial_modes = [("Encoder baseline (enc)", "partial* (token)", "leak-free"),
                     ("Encoder baseline (enc)", "partial* (token)", "leak-free, early (≤1 pt)"),
                     ("Encoder baseline (enc)", "partial* (token)", "leak-free, budget (≤2% benign stops)")]
    assert modes == [("Encoder baseline (enc)", "full", "fixed"), ("Encoder baseline (enc)", "full", "leak-free"),
                     *partial_modes,
                     ("Encoder baseline (enc)", "full", "fixed"), ("Encoder baseline (enc)", "full", "leak-free"),
                     *partial_modes]
    paper_rows = [line for line in paper.splitlines() if line.startswith("| Encoder baseline (enc) | partial* ")]
    assert [line.split("|")[3:5] for line in paper_rows] == [[" 0.5 ", " 1 "], [" 0.8 ", " 1 "]] * 2
    assert (f"- `{encoder_partial}`: test.test_qwen_partial on `./data/` (`test` split, 4 examples); its "
            f"full-detection rows are those of `{encoder}` (same checkpoint and data)") in text
    assert f"- `{other_data}`: test.test_qwen_partial on `other` (`test` split, 4 examples)\n" in text


def test_cli_writes_file_and_errors(tmp_path, capsys):
    run = _write_run(tmp_path / "scm", make_summary())
    out = tmp_path / "report.md"
    main(parse_args([str(run), "--output", str(out)]))
    assert all(row in out.read_text() for row in EXPECTED_ROWS)
    main(parse_args([str(run)]))
    assert EXPECTED_ROWS[2] in capsys.readouterr().out
    old = make_summary()
    del old["protocols"]
    _write_run(tmp_path / "old", old)
    with pytest.raises(DataFormatError, match=r"older version.*python -m utils.evaluation.rescore"):
        load_summary(tmp_path / "old")
    with pytest.raises(FileNotFoundError, match="not a finished evaluation"):
        load_summary(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "summary.json").write_text("{}")
    with pytest.raises(DataFormatError, match="no results in this summary"):
        load_summary(tmp_path / "empty")
    with pytest.raises(SystemExit):
        parse_args([])


def test_run_report_shell_wrapper(tmp_path):
    run = _write_run(tmp_path / "scm", make_summary())
    out = tmp_path / "merged.md"
    done = subprocess.run(["bash", str(REPO / "scripts" / "run-report.sh"), str(run), "--output", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert EXPECTED_ROWS[3] in out.read_text()
    usage = subprocess.run(["bash", str(REPO / "scripts" / "run-report.sh")], capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 2 and "usage: bash scripts/run-report.sh" in usage.stderr
