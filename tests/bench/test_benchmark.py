"""The GPU benchmark (bench/benchmark.py), run end to end with --tiny on the CPU, and its pure helpers.

What must hold: one tiny run writes bench.json with every section and sane positive numbers (and the fast path's
"same answers" check passing), plus bench.md with the target table; flags are validated with messages that name
the fix; a failing or interrupted section never loses what the others measured; thresholds, lengths and the
target verdicts are computed as documented.
"""

from __future__ import annotations

import json

import pytest
import torch

import bench.benchmark as bench
from bench.benchmark import BenchArguments, _gap_thresholds, main, resolve_settings, sample_lengths, stream_summary


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-tiny")
    report = main(BenchArguments(tiny=True, out=str(out)), argv=["--tiny"])
    return out, report


def test_tiny_run_writes_every_section_with_positive_numbers(tiny_report):
    out, report = tiny_report
    saved = json.loads((out / "bench.json").read_text())
    assert saved["sections"].keys() == {"answers", "stream", "train", "eval"}
    assert all("error" not in section for section in saved["sections"].values())
    meta = saved["meta"]
    assert meta["tiny"] is True and meta["device"] == "cpu" and meta["torch"] == torch.__version__
    assert meta["command"] == "python -m bench.benchmark --tiny" and meta["date"].startswith("20")
    assert "interrupted" not in meta

    train = saved["sections"]["train"]
    for style in ("project", "paper_style"):
        assert train[style]["examples_per_second"] > 0 and train[style]["timed_steps"] >= 1
    assert train["ratio"] == pytest.approx(train["project"]["examples_per_second"]
                                           / train["paper_style"]["examples_per_second"], rel=1e-2)
    # Padding to the maximum length wastes most positions; dynamic padding wastes far fewer.
    assert train["paper_style"]["real_token_fraction"] < train["project"]["real_token_fraction"]

    evaluation = saved["sections"]["eval"]
    assert evaluation["paper_style"]["examples_per_second"] > 0 and evaluation["paper_style"]["examples"] >= 8
    assert evaluation["project"]["8"]["examples_per_second"] > 0 and evaluation["project"]["8"]["examples"] == 40
    assert evaluation["ratio"] > 0

    stream = saved["sections"]["stream"]["models"]["tiny"]
    for batch in ("1", "4"):
        for path in ("monitor", "hf_eager"):
            rows = stream["batches"][batch][path]["rows"]
            assert [row["position"] for row in rows] == [16, 64]
            assert all(row["ms_per_step"]["median"] > 0 for row in rows)
            assert rows[0]["ms_per_token"] == pytest.approx(rows[0]["ms_per_step"]["median"] / int(batch))


def test_tiny_run_checks_same_answers_through_the_graph_bookkeeping(tiny_report):
    _, report = tiny_report
    answers = report["sections"]["answers"]
    entry = answers["by_dtype"]["float32"]
    assert answers["pass"] is True and entry["pass"] is True
    assert entry["fast_path"].startswith("cuda-graph") and entry["fast_path_stats"]["replays"] > 0
    assert max(entry["max_abs_diff_fast_vs_eager_runtime"].values()) <= 1e-5
    assert entry["decisions_equal"] == entry["decisions_total"] == 18 and entry["decisions_unexplained"] == 0
    assert any(d["stopped_streams"] > 0 for d in entry["decisions"])  # the decisions compared are not all "never"
    assert entry["live_rule"]["equal"] and any(stop is not None for stop in entry["live_rule"]["stops_fast"])


def test_tiny_run_writes_the_target_table(tiny_report):
    out, _ = tiny_report
    table = (out / "bench.md").read_text()
    assert "TINY smoke run: not a measurement" in table
    assert "| training tiny (ex/s; paper style = padded to max length) |" in table
    assert "| evaluation tiny (ex/s, batch 8; paper style = fp32 padded) |" in table
    assert "| streaming tiny batch 1 @ 16 (ms/token; baseline HF eager) |" in table
    assert "| streaming tiny batch 1: step time at 64 / at 16 |" in table
    assert "| streaming tiny batch 4: step time at 64 / at 16 |" in table
    assert "info (KV reads grow with position)" in table
    assert ("| same answers float32: fast path (cuda-graph (CPU: eager stand-in for capture)) vs eager runtime |"
            in table)
    assert (out / "bench.log").read_text().count("[bench +") >= 10


# ------------------------------------------------------------------------------------------------ flags


@pytest.mark.parametrize("flags, message", [
    (dict(sections="train,bogus"), r"--sections: unknown or empty \['bogus'\]; choose from answers, stream, train"),
    (dict(train_budget_s=0), "--train-budget-s must be > 0, got 0"),
    (dict(stream_steps=0), "--stream-steps must be >= 1, got 0"),
])
def test_bad_flags_name_the_fix(flags, message):
    with pytest.raises(ValueError, match=message):
        resolve_settings(BenchArguments(tiny=True, **flags))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_full_run_without_cuda_points_to_tiny():
    with pytest.raises(ValueError, match="none is visible; use --tiny for a CPU smoke run"):
        resolve_settings(BenchArguments())


def test_tiny_profile_replaces_the_sizes():
    settings = resolve_settings(BenchArguments(tiny=True, stream_positions="128,1024,4096"))
    assert settings.stream_positions == [16, 64] and settings.stream_batches == [1, 4]
    assert settings.args.max_length == 128 and settings.device.type == "cpu"
    assert settings.sections == ["answers", "stream", "train", "eval"]


# ------------------------------------------------------------------------------------------------ robustness


def test_an_expired_budget_skips_measurements_instead_of_running_them(tmp_path):
    report = main(BenchArguments(tiny=True, out=str(tmp_path), sections="stream", stream_budget_s=1e-9), argv=[])
    assert report["sections"]["stream"]["models"] == {"tiny": {"skipped": "time budget"}}


def test_a_failing_section_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    def broken(run, settings, deadline):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setitem(bench.SECTION_RUNNERS, "answers", broken)
    report = main(BenchArguments(tiny=True, out=str(tmp_path), sections="answers,eval"), argv=[])
    assert report["sections"]["answers"]["error"] == "RuntimeError: CUDA out of memory"
    assert report["sections"]["eval"]["project"]["8"]["examples_per_second"] > 0
    assert "| section answers | FAILED: RuntimeError: CUDA out of memory |" in (tmp_path / "bench.md").read_text()


def test_an_interrupted_run_saves_what_it_measured(tmp_path, monkeypatch):
    def interrupted(run, settings, deadline):
        raise bench._Interrupted("SIGTERM (the run-bench.sh timeout)")

    monkeypatch.setitem(bench.SECTION_RUNNERS, "train", interrupted)
    main(BenchArguments(tiny=True, out=str(tmp_path), sections="answers,train,eval"), argv=[])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["meta"]["interrupted"] == "SIGTERM (the run-bench.sh timeout)"
    assert saved["sections"]["answers"]["pass"] is True and "eval" not in saved["sections"]


# ------------------------------------------------------------------------------------------------ helpers


def test_gap_thresholds_sit_in_the_widest_gap_near_each_quantile():
    scores = [0.10, 0.11, 0.12, 0.30, 0.31, 0.32, 0.33, 0.70, 0.71, 0.72]
    chosen = _gap_thresholds(scores, quantiles=(0.25, 0.65))
    assert chosen[0]["theta"] == pytest.approx(0.21) and chosen[0]["margin"] == pytest.approx(0.09)
    assert chosen[1]["theta"] == pytest.approx(0.515) and chosen[1]["margin"] == pytest.approx(0.185)


def test_sample_lengths_are_seeded_capped_and_centred_on_the_mean():
    lengths = sample_lengths(20000, mean=370, sigma=0.6, max_length=4096, seed=3)
    assert lengths == sample_lengths(20000, mean=370, sigma=0.6, max_length=4096, seed=3)
    assert lengths != sample_lengths(20000, mean=370, sigma=0.6, max_length=4096, seed=4)
    assert 8 <= min(lengths) and max(lengths) <= 4096
    assert sum(lengths) / len(lengths) == pytest.approx(370, rel=0.03)


def test_stream_summary_applies_the_targets():
    def rows(*pairs):
        return {"rows": [{"position": p, "ms_per_step": {"median": ms}, "ms_per_token": ms / b} for p, ms, b in pairs]}

    section = {"models": {"0.5b": {"fast_path": "cuda-graph", "batches": {
        "1": {"monitor": rows((128, 1.5, 1), (4096, 2.4, 1)), "hf_eager": rows((128, 60.0, 1), (4096, 66.0, 1))},
        "32": {"monitor": rows((128, 4.0, 32), (4096, 7.0, 32)), "hf_eager": rows((128, 80.0, 32))},
    }}}}
    summary = stream_summary(section)
    assert [(r["batch"], r["position"], r["met"], r["speedup"], r["flatness"]) for r in summary] == [
        (1, 128, True, 40.0, 1.0), (1, 4096, False, 27.5, 1.6), (32, 128, True, 20.0, 1.0),
        (32, 4096, False, None, 1.75)]
