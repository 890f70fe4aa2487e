"""bench/bench_guard.py on a small setting: it measures what it says and writes its report."""

from __future__ import annotations

import json

import pytest

from bench import bench_guard
from bench.bench_guard import GuardBenchArguments


def test_small_guard_benchmark_writes_consistent_numbers(tmp_path):
    report = bench_guard.main(GuardBenchArguments(output_dir=str(tmp_path), layers=1, streams=40, rounds=4,
                                                  lengths="60,120"))
    memory = report["memory"]
    assert memory["open_streams"] == 40 and 0 < memory["kv_mb_needed"] <= memory["kv_mb_held"]
    assert memory["slabs"] >= 1 and memory["rows"] >= 40
    assert [row["characters"] for row in report["long_word"]] == [60, 120]
    assert all(row["released_all"] and row["tokens_scored"] > 0 for row in report["long_word"])
    saved = json.loads((tmp_path / "guard-bench.json").read_text())
    assert saved["memory"] == memory and "| characters | seconds |" in (tmp_path / "guard-bench.md").read_text()


def test_bad_lengths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--lengths takes comma-separated positive integers"):
        bench_guard.main(GuardBenchArguments(output_dir=str(tmp_path), lengths="a,b"))
