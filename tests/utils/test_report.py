"""utils/report.py: Table-2-style rows and markdown from hand-made summaries; merging runs; the CLI and its wrapper."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from utils.io_utils import DataFormatError
from utils.metrics import full_protocols, partial_protocols
from utils.report import load_summary, main, merged_report, parse_args, rows_table, run_report, summary_rows

REPO = Path(__file__).resolve().parents[2]


def rec(rid, label, scores, full):
    return {"id": rid, "label": label, "n_response_tokens": len(scores), "token_labels": [0] * len(scores),
            "scores": {"token": scores}, "full_score": full}


TEST = [rec("t-h1", 1, [0.9], 0.9), rec("t-h2", 1, [0.9, 0.6], 0.4), rec("t-b1", 0, [0.6, 0.6], 0.3),
        rec("t-b2", 0, [0.1], 0.6)]
VAL = [rec("v-h1", 1, [0.6, 0.6], 0.7), rec("v-h2", 1, [0.7, 0.55, 0.1], 0.8), rec("v-b1", 0, [0.9], 0.2),
       rec("v-b2", 0, [0.2], 0.65)]


def make_summary(task="scm", name="ckpt", with_partial=True):
    summary = {
        "script": "test.test_qwen_partial",
        "model": {"task": task, "name": name, "path": f"/runs/{name}", "backbone_type": "qwen2"},
        "data": {"data_dir": "/data", "max_length": 4096,
                 "splits": {"val": {"examples": 4, "harmful": 2, "response_tokens": 7, "truncated": 0},
                            "test": {"examples": 4, "harmful": 2, "response_tokens": 6, "truncated": 1}}},
        "eval_split": "test",
        "full": full_protocols(TEST, VAL, (0.5, 0.6, 0.7, 0.8)),
        "partial": {"token": partial_protocols(TEST, VAL, "token", (0.5, 0.8), max_k=3)} if with_partial else {},
        "runtime": {"device": "cpu", "dtype": "float32", "batch_size": 8, "inference_seconds": {"test": 0.5}},
    }
    summary["rows"] = summary_rows(summary)
    return summary


EXPECTED_ROWS = [
    "| SCM (ckpt) | full | fixed | 0.5 | – | " + " | ".join(["50.00"] * 7) + " | – | – | – |",
    # Validation picks theta 0.7 (the only perfect one there); on test it flags t-h1 only.
    "| SCM (ckpt) | full | leak-free | 0.7 | – | 66.67 | 100.00 | 80.00 | 100.00 | 50.00 | 66.67 | 73.33 | – | – | – |",
    # Paper: (0.8, 1) is perfect on test; t-h1 stops at 1/1 tokens, t-h2 at 1/2: 75% seen on average.
    "| SCM (ckpt) | partial* (token) | paper | 0.8 | 1 | " + " | ".join(["100.00"] * 7) + " | 75.00 | 0.00 | 0.00 |",
    # Leak-free: (0.5, 2) from validation; on test tp = fp = tn = fn = 1, t-h2 stops at its last token.
    "| SCM (ckpt) | partial* (token) | leak-free | 0.5 | 2 | " + " | ".join(["50.00"] * 7)
    + " | 100.00 | 0.00 | 0.00 |",
]


def test_rows_table_pinned():
    table = rows_table(make_summary()["rows"]).splitlines()
    assert table[0].startswith("| Model | Mode | Protocol | θ | k | Benign P | Benign R | Benign F1 | Harmful P |")
    assert table[2:] == EXPECTED_ROWS


def test_run_report_sections():
    summary = make_summary()
    summary["plots"] = ["macro-f1-vs-k-token.png"]
    text = run_report(summary)
    assert "# Evaluation: SCM `ckpt`" in text
    assert "| test | 4 | 2 | 6 | 1 |" in text
    assert all(row in text for row in EXPECTED_ROWS)
    assert "## Full detection by threshold" in text and "| 0.7 | 100.00 |" in text  # val at 0.7 is perfect
    assert "## Partial detection, `token` scorer (reported on `test`)" in text
    # per theta: 0.5 -> paper k 1 ((4/5 + 2/3) / 2 = 73.33), leak-free k 2 (val 100, test 50)
    assert "| 0.5 | 1 | 73.33 | 2 | 100.00 | 50.00 |" in text
    assert "harmful responses: 2 of 2 stopped (0 not stopped)" in text
    assert "0-10%: 0, 10-20%: 0" in text
    assert "![macro-f1-vs-k-token](macro-f1-vs-k-token.png)" in text


def _write_run(folder: Path, summary: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_merged_report_deduplicates_and_keeps_order(tmp_path):
    scm = _write_run(tmp_path / "scm", make_summary())
    again = _write_run(tmp_path / "scm-again", make_summary())
    encoder = _write_run(tmp_path / "enc", make_summary("encoder-full", "enc", with_partial=False))
    text = merged_report([scm, again, encoder])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(" in line.split("|")[1]]
    assert rows[:4] == EXPECTED_ROWS
    assert [r.split("|")[1].strip() for r in rows[4:]] == ["Encoder baseline (enc)"] * 2
    assert f"- `{encoder}`: test.test_qwen_partial on `/data` (`test` split, 4 examples)" in text


def test_cli_writes_file_and_errors(tmp_path, capsys):
    run = _write_run(tmp_path / "scm", make_summary())
    out = tmp_path / "report.md"
    main(parse_args([str(run), "--output", str(out)]))
    assert all(row in out.read_text() for row in EXPECTED_ROWS)
    main(parse_args([str(run)]))
    assert EXPECTED_ROWS[2] in capsys.readouterr().out
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
