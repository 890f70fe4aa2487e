"""Entry points of the streaming runtime: test/stream_monitor.py (and scripts/run-stream.sh), test/verify_streaming.py
and bench/bench_streaming.py, on tiny random checkpoints that carry the real SmolLM2 / Qwen2.5 tokenizers.

A "flagging" checkpoint has a token head with zero weights and a bias towards "harmful": every token scores
sigmoid(5) = 0.9933, so delay-k stops at response token k - 1 and the tests know exactly where.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from model import SCMConfig, SCMModel
from tests.tiny_checkpoints import build_tiny_generator, build_tiny_scm, tiny_llama_config
from bench import bench_streaming
from test import stream_monitor, verify_streaming
from bench.bench_streaming import BenchArguments
from test.stream_monitor import StreamMonitorArguments
from test.verify_streaming import VerifyArguments
from utils.cli import parse_dataclasses
from utils.io_utils import DataFormatError
from serve.text_guard import STOP_NOTICE

from tests.tiny_models import tiny_qwen2_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smol_dir():
    from model.assets import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="module")
def flagging_checkpoint(tmp_path_factory, smol_dir) -> Path:
    folder = tmp_path_factory.mktemp("flagging-scm")
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(tokenizer).to_dict(), theta=0.9, delay_k=2))
    with torch.no_grad():
        model.token_scorer[1].weight.zero_()
        model.token_scorer[1].bias.copy_(torch.tensor([0.0, 5.0]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory, smol_dir) -> Path:
    return build_tiny_scm(tmp_path_factory.mktemp("plain-scm"), smol_dir, theta=0.5, delay_k=1)


@pytest.fixture(scope="module")
def smol_generator(tmp_path_factory, smol_dir) -> Path:
    return build_tiny_generator(tmp_path_factory.mktemp("smol-generator"), smol_dir)


@pytest.fixture(scope="module")
def qwen_generator(tmp_path_factory, qwen_tokenizer_dir) -> Path:
    return build_tiny_generator(tmp_path_factory.mktemp("qwen-generator"), qwen_tokenizer_dir, seed=3)


def _run_cli(**kwargs) -> tuple[dict, str]:
    out = io.StringIO()
    report = stream_monitor.main(StreamMonitorArguments(device="cpu", **kwargs), out)
    return report, out.getvalue()


# ------------------------------------------------------------------------------------------- stream_monitor


def test_shared_tokenizer_generation_is_stopped_by_the_criteria(flagging_checkpoint, smol_generator):
    report, printed = _run_cli(model_path=str(flagging_checkpoint), generator=str(smol_generator),
                               prompt="How do I bake bread?", max_new_tokens=20)
    result = report["results"][0]
    assert result["path"] == "stopping-criteria" and result["ended_by"] == "monitor"
    assert result["generated_tokens"] == 2 and result["response_tokens_scored"] == 2  # delay-2 fires on token 1
    assert result["stop"]["index"] == 1 and result["stop"]["count"] == 2 and result["stop"]["rule"] == "delay-2"
    assert result["stop"]["score"] == pytest.approx(0.99330715, abs=1e-6)
    assert f"[response] {result['shown_text']} {STOP_NOTICE}" in printed
    assert "STOPPED at response token 1" in printed and "delay-2 count reached 2" in printed


def test_another_tokenizer_goes_through_the_text_guard(flagging_checkpoint, qwen_generator, tmp_path):
    report, printed = _run_cli(model_path=str(flagging_checkpoint), generator=str(qwen_generator),
                               prompt="Tell me a story.", max_new_tokens=40, k=3,
                               output_file=str(tmp_path / "out.json"))
    result = report["results"][0]
    assert result["path"] == "text-guard" and result["stopped"] and result["stop"]["index"] == 2
    assert result["stop"]["rule"] == "delay-3" and result["response_tokens_scored"] >= 3
    assert json.loads((tmp_path / "out.json").read_text())["results"][0]["stop"] == result["stop"]
    assert "STOPPED at response token 2" in printed


def test_an_unflagged_generation_reports_why_it_ended(plain_checkpoint, smol_generator):
    report, printed = _run_cli(model_path=str(plain_checkpoint), generator=str(smol_generator), prompt="Hi",
                               max_new_tokens=6, theta=1.0, do_sample=True, seed=5)
    result = report["results"][0]
    assert not result["stopped"] and result["ended_by"] == "max_new_tokens" and result["generated_tokens"] == 6
    assert "not stopped (max_new_tokens): 6 response tokens scored" in printed
    assert report["operating_point"] == {"theta": 1.0, "rule": "delay-1", "scorer": "token"}


def test_input_file_mode_stops_each_record_on_its_full_tokenization(flagging_checkpoint, tmp_path, smol_dir):
    pairs = tmp_path / "pairs.jsonl"
    records = [{"prompt": "p", "response": "First, gather the tools. Then go."}, {"prompt": "q", "response": "Ok"},
               {"prompt": "r", "response": ""}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    offsets = tokenizer(records[0]["response"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for chunk_chars in (0, 4):
        report, printed = _run_cli(model_path=str(flagging_checkpoint), input=str(pairs), k=3,
                                   chunk_chars=chunk_chars)
        first, second, third = report["results"]
        assert first["stop"]["index"] == 2 and first["stop"]["char_start"] == offsets[2][0]
        assert first["shown_text"] == records[0]["response"][: offsets[2][0]]
        assert not second["stopped"] and second["response_tokens_scored"] == 1 and second["shown_text"] == "Ok"
        assert not third["stopped"] and third["response_tokens_scored"] == 0
        assert "[record 1] STOPPED at response token 2" in printed
        assert "[record 3] not stopped (end of response): 0 response tokens scored" in printed


@pytest.fixture(scope="module")
def category_checkpoint(tmp_path_factory, smol_dir) -> Path:
    """The flagging checkpoint's token head (every token scores 0.9933) with a category head that names illicit
    everywhere (zero weights, bias 6 of 3 labels: p = e^6 / (e^6 + 2))."""
    folder = tmp_path_factory.mktemp("category-scm")
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    torch.manual_seed(0)
    model = SCMModel(SCMConfig(backbone_config=tiny_llama_config(tokenizer).to_dict(), theta=0.9, delay_k=2,
                               category_labels=["hate", "illicit", "self-harm"]))
    with torch.no_grad():
        model.token_scorer[1].weight.zero_()
        model.token_scorer[1].bias.copy_(torch.tensor([0.0, 5.0]))
        model.category_scorer.weight.zero_()
        model.category_scorer.bias.copy_(torch.tensor([0.0, 6.0, 0.0]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_stop_names_its_category_and_the_policy_flags_apply(category_checkpoint, plain_checkpoint, smol_generator,
                                                             tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "response": "First, gather the tools. Then go."}) + "\n")
    score, p_illicit = 1 / (1 + math.exp(-5)), math.exp(6) / (math.exp(6) + 2)
    report, printed = _run_cli(model_path=str(category_checkpoint), input=str(pairs), k=3)
    stop = report["results"][0]["stop"]
    assert (stop["index"], stop["category"]) == (2, "illicit")
    assert stop["category_score"] == pytest.approx(score * p_illicit, abs=1e-5)
    assert list(stop["category_scores"]) == ["hate", "illicit", "self-harm"]
    assert f"; category illicit (category score {score * p_illicit:.4f})" in printed
    assert "[categories] stop on: hate, illicit, self-harm; annotate only: none" in printed
    assert report["operating_point"]["categories"]["block"] == ["hate", "illicit", "self-harm"]
    # Annotated: the stream is not stopped; every firing from the k-th flagged token on is listed.
    report, printed = _run_cli(model_path=str(category_checkpoint), input=str(pairs), k=3,
                               annotate_categories="illicit")
    result = report["results"][0]
    assert not result["stopped"] and result["shown_text"] == "First, gather the tools. Then go."
    assert [a["response_token_index"] for a in result["annotations"]] == list(range(2, result[
        "response_tokens_scored"]))
    assert f"annotated, not stopped: illicit x{result['response_tokens_scored'] - 2} (first at response token 2" in \
        printed
    # Generation through the stopping criteria names the category too.
    report, printed = _run_cli(model_path=str(category_checkpoint), prompt="Hello", generator=str(smol_generator),
                               max_new_tokens=6, k=2)
    assert report["results"][0]["stop"]["category"] == "illicit" and "; category illicit (" in printed
    with pytest.raises(ValueError, match="--block-categories: unknown category weapons; known: hate, illicit"):
        _run_cli(model_path=str(category_checkpoint), input=str(pairs), block_categories="weapons")
    with pytest.raises(ValueError, match="--category-thresholds: this checkpoint has no category head .*"
                                         "--category-head"):
        _run_cli(model_path=str(plain_checkpoint), input=str(pairs), category_thresholds="illicit=0.5")
    # A head-less checkpoint's stop record and report line are what they were.
    report, printed = _run_cli(model_path=str(plain_checkpoint), input=str(pairs), theta=0.0, k=1)
    assert "category" not in report["results"][0]["stop"] and "category" not in printed
    assert report["results"][0]["annotations"] == []


def _record_points(folder: Path) -> Path:
    """An operating_point.json (format 1) as a partial evaluation writes it: token leak_free (0.5, 3), budget
    (0.5, 4)."""
    def point(selection, k):
        return {"selection": selection, "rule": "delay-k", "scorer": "token", "selected_on": "val",
                "reported_on": "test", "theta": 0.5, "k": k, "counting": "all", "validation": {}, "test": {}}
    (folder / "operating_point.json").write_text(json.dumps({
        "schema": "scm-operating-point", "format_version": 1, "default": "leak_free", "scorer": "token",
        "rule": "delay-k", "max_benign_stop_rate": 0.02,
        "points": {"leak_free": point("leak_free", 3), "leak_free_early": point("leak_free_early", 3),
                   "leak_free_budget": {**point("leak_free_budget", 4), "max_benign_stop_rate": 0.02}},
        "source": {"data_dir": "data", "driver": "bash scripts/run-scm.sh test"}, "written_at": "T"}))
    return folder


def test_the_cli_serves_the_checkpoints_recorded_point(flagging_checkpoint, smol_generator, tmp_path, capsys):
    # The flagging checkpoint's own default is theta 0.9, delay-2; its recorded point is delay-3 (budget delay-4).
    folder = _record_points(shutil.copytree(flagging_checkpoint, tmp_path / "ckpt"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "response": "First, gather the tools. Then go."}) + "\n")
    report, printed = _run_cli(model_path=str(folder), input=str(pairs))
    assert report["results"][0]["stop"]["index"] == 2 and report["results"][0]["stop"]["rule"] == "delay-3"
    assert printed.startswith("[operating point] theta 0.5, k 3, delay-k, token scorer from operating_point.json "
                              "(leak_free, chosen on val of data by `bash scripts/run-scm.sh test` at T)\n")
    assert report["operating_point_source"]["source"] == "operating_point.json"
    assert report["operating_point"] == {"theta": 0.5, "rule": "delay-3", "scorer": "token"}
    # Explicit flags win; --operating-point picks another recorded point.
    assert _run_cli(model_path=str(folder), input=str(pairs), k=1)[0]["results"][0]["stop"]["index"] == 0
    assert _run_cli(model_path=str(folder), input=str(pairs),
                    operating_point="budget")[0]["results"][0]["stop"]["index"] == 3
    # generate()'s stopping criteria (the generator shares the monitor's tokenizer) serve it too.
    report, _ = _run_cli(model_path=str(folder), generator=str(smol_generator), prompt="How do I bake bread?",
                         max_new_tokens=20)
    assert report["results"][0]["path"] == "stopping-criteria" and report["results"][0]["stop"]["index"] == 2
    # No file: the training default (delay-2), with a warning that names the calibration command.
    capsys.readouterr()
    report, printed = _run_cli(model_path=str(flagging_checkpoint), input=str(pairs))
    assert report["results"][0]["stop"]["index"] == 1 and not report["operating_point_source"]["calibrated"]
    assert (f"warning: no operating_point.json in {flagging_checkpoint}: serving the training default theta 0.9 / "
            f"k 2; calibrate with `bash scripts/run-scm.sh test --model-path {flagging_checkpoint}") in \
        capsys.readouterr().err


def test_bad_arguments_name_the_fix(tmp_path, plain_checkpoint):
    with pytest.raises(ValueError, match="--model-path is required"):
        stream_monitor.check_args(StreamMonitorArguments(prompt="hi"))
    with pytest.raises(ValueError, match="exactly one of --prompt"):
        stream_monitor.check_args(StreamMonitorArguments(model_path="x", prompt="hi", input="y"))
    with pytest.raises(ValueError, match="--max-new-tokens must be >= 1"):
        stream_monitor.check_args(StreamMonitorArguments(model_path="x", prompt="hi", max_new_tokens=0))
    with pytest.raises(SystemExit):
        parse_dataclasses((StreamMonitorArguments,), ["--model-path", "x", "--promt", "hi"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataFormatError, match="record 2: field 'response' is missing"):
        _run_cli(model_path=str(plain_checkpoint), input=str(bad))


def test_unknown_flag_suggests_the_closest(capsys):
    with pytest.raises(SystemExit):
        parse_dataclasses((StreamMonitorArguments,), ["--model-path", "x", "--max-new-tokenz", "3"])
    assert "did you mean --max-new-tokens" in capsys.readouterr().err


def test_run_stream_sh_end_to_end(flagging_checkpoint, smol_generator):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        ["bash", "scripts/run-stream.sh", "--model-path", str(flagging_checkpoint), "--generator",
         str(smol_generator), "--prompt", "hi", "--max-new-tokens", "5", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "STOPPED at response token 1" in completed.stdout


# ------------------------------------------------------------------------------------------- verify_streaming


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-scm")
    torch.manual_seed(0)
    SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), theta=0.5, delay_k=2)).save_pretrained(folder)
    return folder


def _verify(checkpoint, data, **kwargs) -> dict:
    return verify_streaming.main(VerifyArguments(model_path=str(checkpoint), data_dir=str(data), device="cpu",
                                                 batch_streams=4, max_chunk=5, **kwargs))


def test_verification_passes_and_writes_its_report(tiny_checkpoint, tiny_processed_data, tmp_path):
    report = _verify(tiny_checkpoint, tiny_processed_data, output_dir=str(tmp_path))
    split = report["splits"][0]
    assert report["passed"] and split["split"] == "test" and split["examples"] == 12
    assert split["tokens_compared"] > 12 and max(split["max_abs_diff"].values()) <= 1e-4
    assert split["stopped"]["streamed"] == split["stopped"]["offline"] > 0 and split["stop_mismatches"] == []
    written = json.loads((tmp_path / "streaming-verification-test.json").read_text())
    assert written["passed"] and written["splits"][0]["tokens_compared"] == split["tokens_compared"]


def test_verification_fails_on_a_score_or_stop_difference(tiny_checkpoint, tiny_processed_data, monkeypatch):
    real = verify_streaming.score_offline

    def shifted(model, ids):
        token, holistic = real(model, ids)
        return token + 0.6, holistic  # every offline token score >= theta: offline stops at response token 1

    monkeypatch.setattr(verify_streaming, "score_offline", shifted)
    report = _verify(tiny_checkpoint, tiny_processed_data, limit=4)
    split = report["splits"][0]
    assert not report["passed"] and split["max_abs_diff"]["token"] > 0.1
    assert {entry["offline_stop"] for entry in split["stop_mismatches"]} == {1}


def test_verification_rejects_records_without_response_start(tiny_checkpoint, tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"input_ids": [5, 6, 7], "token_labels": [-100, 0, 0],
                                                     "sequence_labels": 0}) + "\n")
    with pytest.raises(DataFormatError, match="line 1: field 'response_start' is missing"):
        _verify(tiny_checkpoint, tmp_path)


def test_verification_accepts_the_flags_run_scm_sh_forwards():
    (args,) = parse_dataclasses((VerifyArguments,), [
        "--model-path", "m", "--data-dir", "d", "--output-dir", "o", "--splits", "val,test", "--batch-size", "8",
        "--max-length", "4096", "--thresholds", "0.5,0.9", "--max-k", "3", "--limit", "5", "--device", "auto",
        "--dtype", "auto"])
    assert verify_streaming.check_args(args) == ["val", "test"]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        verify_streaming.check_args(VerifyArguments(model_path="m", data_dir="d", splits="dev"))


# ------------------------------------------------------------------------------------------- bench_streaming


def test_tiny_benchmark_writes_consistent_medians(tmp_path):
    threads = torch.get_num_threads()
    report = bench_streaming.main(BenchArguments(tiny=True, output_dir=str(tmp_path), prefix_lengths="16,40",
                                                 batch_sizes="1,3", steps=3, warmup=1, rescore_repeats=2, threads=1))
    assert torch.get_num_threads() == threads
    rows = report["results"]
    assert [(r["prefix_length"], r["batch"]) for r in rows] == [(16, 1), (40, 1), (16, 3), (40, 3)]
    for r in rows:
        assert len(r["incremental_times_ms"]) == 3 and len(r["rescore_times_ms"]) == 2
        assert r["incremental_ms_per_step"] == statistics.median(r["incremental_times_ms"])
        assert r["rescore_ms_per_step"] == statistics.median(r["rescore_times_ms"])
        assert r["incremental_ms_per_token"] == pytest.approx(r["incremental_ms_per_step"] / r["batch"])
        assert r["speedup"] == pytest.approx(r["rescore_ms_per_step"] / r["incremental_ms_per_step"])
    assert report["threads"] == 1 and report["versions"]["torch"] == torch.__version__
    assert report["target"]["met"] is None  # no 512-token prefix measured
    saved = json.loads((tmp_path / "streaming-bench-tiny.json").read_text())
    assert saved["results"] == rows and "cpu_count" in saved["machine"]
    assert "| prefix | batch | incremental ms/step |" in (tmp_path / "streaming-bench-tiny.md").read_text()


def test_benchmark_describes_its_backbone_without_the_machines_absolute_path(tiny_causal_backbone, tmp_path):
    _, description = bench_streaming.build_model(BenchArguments(backbone=str(tiny_causal_backbone.resolve()),
                                                                output_dir=str(tmp_path)), longest=64)
    assert not description.startswith("SCM over /")
    assert description == f"SCM over {os.path.relpath(tiny_causal_backbone.resolve(), REPO)} (random heads)"


@pytest.mark.parametrize("kwargs, match", [({"prefix_lengths": "a,b"}, "--prefix-lengths takes comma-separated"),
                                           ({"batch_sizes": "0"}, "--batch-sizes needs positive"),
                                           ({"steps": 0}, "--steps must be >= 1"),
                                           ({"backbone": "x"}, "drop --backbone")])
def test_benchmark_flag_errors(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        bench_streaming.main(BenchArguments(tiny=True, output_dir=str(tmp_path), **kwargs))


def test_run_stream_bench_sh_reaches_the_benchmark():
    completed = subprocess.run(["bash", "scripts/run-stream-bench.sh", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0 and "--prefix-lengths" in completed.stdout


# ------------------------------------------------------------------------------------------- clear errors (issue 11)


def test_flag_mistakes_are_refused_before_anything_is_loaded(tmp_path, plain_checkpoint):
    base = {"model_path": str(plain_checkpoint), "prompt": "hi"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA GPU is visible here.*use --device cpu"):
            stream_monitor.check_args(StreamMonitorArguments(device="cuda", **base))
    with pytest.raises(ValueError, match="--device gpu: unknown device"):
        stream_monitor.check_args(StreamMonitorArguments(device="gpu", **base))
    with pytest.raises(ValueError, match=r"--generator .*missing is not a folder: pass a Hugging Face causal LM"):
        stream_monitor.check_args(StreamMonitorArguments(generator=str(tmp_path / "missing"), **base))
    with pytest.raises(ValueError, match="--generator .* holds no config.json"):
        stream_monitor.check_args(StreamMonitorArguments(generator=str(tmp_path), **base))
    # Before the fix a folder given as --output-file failed only after the whole run, with a raw traceback.
    with pytest.raises(ValueError, match="--output-file .* is a folder; name a file"):
        stream_monitor.check_args(StreamMonitorArguments(output_file=str(tmp_path), device="cpu", **base))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, so no folder can be made there"):
        stream_monitor.check_args(StreamMonitorArguments(output_file=str(tmp_path / "file" / "out.json"),
                                                         device="cpu", **base))


def test_a_non_utf8_input_names_the_file_and_line(tmp_path, plain_checkpoint):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(DataFormatError, match=r"pairs.jsonl, line 2: not UTF-8 text .*0xe9.*save the file as UTF-8"):
        _run_cli(model_path=str(plain_checkpoint), input=str(pairs))


@pytest.fixture(scope="module")
def short_checkpoint(tmp_path_factory, smol_dir) -> Path:
    return build_tiny_scm(tmp_path_factory.mktemp("short-scm"), smol_dir, theta=1.0, max_position_embeddings=48)


def test_an_over_long_record_is_named_and_the_other_records_are_kept(short_checkpoint, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    records = [{"prompt": "p", "response": "Fine."}, {"prompt": "q", "response": "word " * 60},
               {"prompt": "long " * 60, "response": "x"}, {"prompt": "r", "response": "Also fine."}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
    report, printed = _run_cli(model_path=str(short_checkpoint), input=str(pairs), output_file=str(tmp_path / "o.json"))
    first, second, third, fourth = report["results"]
    assert first["shown_text"] == "Fine." and fourth["shown_text"] == "Also fine." and not fourth.get("error")
    assert second["ended_by"] == "error" and second["error"].startswith("record 2: the response is longer")
    # What was monitored of it before the limit was shown; nothing beyond.
    assert second["response_tokens_scored"] > 0 and ("word " * 60).startswith(second["shown_text"])
    assert len(second["shown_text"]) < len("word " * 60)
    assert third["error"].startswith("record 3: the prompt is") and "maximum of 48" in third["error"]
    assert report["failed_records"] == [2, 3]
    assert json.loads((tmp_path / "o.json").read_text())["failed_records"] == [2, 3]
    assert "[record 2] NOT MONITORED TO THE END: record 2: the response is longer" in printed


def test_an_over_long_prompt_names_the_prompt_flag(short_checkpoint, smol_generator):
    with pytest.raises(ValueError, match=r"--prompt: the prompt is \d+ tokens long"):
        _run_cli(model_path=str(short_checkpoint), generator=str(smol_generator), prompt="long " * 60)


# ------------------------------------------------------------------------------------------- drivers (issue 11)


@pytest.mark.parametrize("command", [["bash", "scripts/run-stream.sh", "--help"],
                                     [sys.executable, "-m", "test.stream_monitor", "--help"]])
def test_help_works_without_a_checkpoint(command):
    # The module is what the driver runs when runs/scm-default does not exist (a fresh clone); the driver adds
    # --model-path runs/scm-default when it does. Before the fix: "--model-path is required" and exit status 2.
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0 and "--model-path" in completed.stdout and "--prompt" in completed.stdout


def test_run_stream_sh_takes_paths_from_the_folder_it_is_run_in(flagging_checkpoint, tmp_path):
    workdir = tmp_path / "elsewhere"
    (workdir / "test").mkdir(parents=True)  # a folder of the user's named like the project's package
    (workdir / "test" / "__init__.py").write_text("raise RuntimeError('the user folder shadowed the project')\n")
    (workdir / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "response": "First, gather the tools."}) + "\n")
    os.symlink(flagging_checkpoint, workdir / "ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        ["bash", str(REPO / "scripts" / "run-stream.sh"), "--model-path", "ckpt", "--input", "pairs.jsonl",
         "--output-file", "out/results.json", "--device", "cpu", "--k", "3"],
        cwd=workdir, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    # Before the fix the driver changed to the repository root: --input was "not found" there.
    report = json.loads((workdir / "out" / "results.json").read_text())
    assert report["model_path"] == "ckpt" and report["results"][0]["stop"]["index"] == 2
    assert not (REPO / "out").exists()
