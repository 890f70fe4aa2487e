"""scripts/run-loso.sh end to end on a hand-made realmix-like folder with tiny random backbones (real tokenizers):
folders built, processed, every model trained with the recipe file's flags and evaluated, one table written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.drivers import run_driver as _bash
from tests.tiny_text_data import write_fineharm_folder

RECIPE = ("DATA_FLAGS=(--max-prompt-tokens 8); ENCODER_DATA_FLAGS=(--max-prompt-tokens 8)\n"
          "CAUSAL_FLAGS=(--max-steps 1 --report-to none)\nENCODER_FLAGS=(--max-steps 1 --report-to none)\n")
RUN_MODES = {
    "lexical": {("lexical-full", "full", None), ("lexical-partial", "full", None),
                ("lexical-partial", "partial", "holistic")},
    "scm": {("scm", "full", None), ("scm", "partial", "token"), ("scm", "partial", "holistic")},
    "qwen-full": {("qwen-full", "full", None), ("qwen-partial", "full", None), ("qwen-partial", "partial", "holistic")},
    "encoder": {("encoder-full", "full", None), ("encoder-partial", "full", None),
                ("encoder-partial", "partial", "holistic")},
}


def _run_loso(models: list[str], driver_backbones: dict[str, str], tmp_path: Path) -> tuple[Path, Path]:
    realmix = write_fineharm_folder(tmp_path / "realmix", {"train": 40, "val": 16, "test": 16})
    (tmp_path / "recipe.sh").write_text(RECIPE)
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()  # an earlier run's timings: another source's row stays, a step run again gets its new time
    (out / "timings.tsv").write_text("jbb-DSN/train-lexical\t91\njbb-GCG/train-lexical\t999\n")
    done = _bash("scripts/run-loso.sh", {
        **driver_backbones, "REALMIX": str(realmix), "OUT": str(out), "RUNS": str(runs), "RECIPE": str(tmp_path / "recipe.sh"),
        "SOURCES": "jbb-GCG", "MODELS": " ".join(models), "ENCODER_PARTIAL": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "loso.json").read_text())["rows"]
    assert {(r["run"], r["mode"], r["scorer"]) for r in rows} == set().union(*(RUN_MODES[m] for m in models))
    built = json.loads((runs / "folders" / "sources.json").read_text())
    test_size = sum(built["counts"]["jbb-GCG"]["all"].values())
    assert all(r["held_out"] == "jbb-GCG" and r["n_benign"] + r["n_harmful"] == test_size for r in rows)
    return out, runs


def test_lexical_and_scm_end_to_end_for_one_source(driver_backbones, tmp_path):
    out, runs = _run_loso(["lexical", "scm"], driver_backbones, tmp_path)
    # the recipe reached the model: one training step, prompts cut to 8 tokens
    summary = json.loads((runs / "models" / "jbb-GCG" / "scm" / "training_summary.json").read_text())
    assert summary["result"]["global_step"] == 1
    (data,) = (runs / "data").glob("jbb-GCG-smollm2-*")
    assert json.loads((data / "meta.json").read_text())["max_prompt_tokens"] == 8
    assert (out / "jbb-GCG" / "scm" / "summary.json").is_file() and (out / "loso.md").is_file()
    rows = [line.split("\t") for line in (out / "timings.tsv").read_text().splitlines()]
    assert [step for step, _ in rows] == [
        "jbb-DSN/train-lexical", "jbb-GCG/data-smollm2", "jbb-GCG/train-lexical", "jbb-GCG/eval-lexical-full",
        "jbb-GCG/eval-lexical-partial", "jbb-GCG/train-scm", "jbb-GCG/eval-scm"]
    assert dict(rows)["jbb-DSN/train-lexical"] == "91" and int(dict(rows)["jbb-GCG/train-lexical"]) < 999
    # run again: nothing is redone (data, models, evaluations newer than their model); FRESH=1 re-evaluates
    env = {**driver_backbones, "REALMIX": str(tmp_path / "realmix"), "OUT": str(out), "RUNS": str(runs),
           "RECIPE": str(tmp_path / "recipe.sh"), "SOURCES": "jbb-GCG", "MODELS": "lexical scm"}
    timings = (out / "timings.tsv").read_text()
    again = _bash("scripts/run-loso.sh", env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "timings.tsv").read_text() == timings
    assert "jbb-GCG/scm already evaluated on the current scm model" in again.stderr
    evaluated = runs / "eval" / "jbb-GCG" / "lexical-full" / "summary.json"
    before = evaluated.stat().st_mtime_ns
    fresh = _bash("scripts/run-loso.sh", {**env, "MODELS": "lexical", "FRESH": "1"})
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "already evaluated" not in fresh.stderr and evaluated.stat().st_mtime_ns > before


def test_a_recipe_with_an_extra_view_trains_scm_on_both_and_serves_the_first(driver_backbones, tmp_path):
    realmix = write_fineharm_folder(tmp_path / "realmix", {"train": 40, "val": 16, "test": 16})
    (tmp_path / "recipe.sh").write_text(RECIPE.replace("DATA_FLAGS=(--max-prompt-tokens 8)",
                                                       "DATA_FLAGS=(--max-prompt-tokens 0)", 1)
                                        + "EXTRA_VIEW_FLAGS=(--max-prompt-tokens 8)\n")
    runs = tmp_path / "runs"
    done = _bash("scripts/run-loso.sh", {
        **driver_backbones, "REALMIX": str(realmix), "OUT": str(tmp_path / "out"), "RUNS": str(runs),
        "RECIPE": str(tmp_path / "recipe.sh"), "SOURCES": "jbb-GCG", "MODELS": "scm"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((runs / "models" / "jbb-GCG" / "scm" / "training_summary.json").read_text())
    assert [m["max_prompt_tokens"] for m in summary["data"]["meta"]] == [0, 8]
    served = json.loads((runs / "models" / "jbb-GCG" / "scm" / "config.json").read_text())
    assert served["max_prompt_tokens"] == 0
    evaluated = json.loads((tmp_path / "out" / "jbb-GCG" / "scm" / "summary.json").read_text())
    assert evaluated["data"]["meta"]["max_prompt_tokens"] == 0  # evaluated on the served view


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_baselines_end_to_end_for_one_source(driver_backbones, tmp_path):
    out, _ = _run_loso(["qwen-full", "encoder"], driver_backbones, tmp_path)
    steps = [line.split("\t")[0] for line in (out / "timings.tsv").read_text().splitlines()]
    assert "jbb-GCG/train-encoder" in steps and "jbb-GCG/eval-encoder-partial" in steps


def test_neural_models_need_a_recipe(tmp_path):
    realmix = write_fineharm_folder(tmp_path / "realmix", {"train": 4, "val": 4, "test": 4})
    done = _bash("scripts/run-loso.sh", {"REALMIX": str(realmix), "MODELS": "lexical scm", "OUT": str(tmp_path)})
    assert done.returncode == 2 and "MODELS=scm needs RECIPE=FILE" in done.stderr
    done = _bash("scripts/run-loso.sh", {"REALMIX": str(realmix), "MODELS": "bert", "OUT": str(tmp_path)})
    assert done.returncode == 2 and "unknown model bert" in done.stderr


def test_on_realmix2_a_source_is_held_out_whole_and_tested_on_its_test_split(tmp_path):
    realmix2 = write_fineharm_folder(tmp_path / "realmix2", {"train": 40, "val": 16, "test": 16})
    out, runs = tmp_path / "out", tmp_path / "runs"
    done = _bash("scripts/run-loso.sh", {"REALMIX": str(realmix2), "OUT": str(out), "RUNS": str(runs),
                                         "SOURCES": "jbb", "MODELS": "lexical"})
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads((runs / "folders" / "sources.json").read_text())
    assert built["level"] == "source" and built["test_splits"] == ["test"]
    assert "reported on the held-out source's records of the original test split" in (out / "loso.md").read_text()
    rows = json.loads((out / "loso.json").read_text())["rows"]
    assert rows and all(r["held_out"] == "jbb" and r["n_benign"] + r["n_harmful"]
                        == sum(built["counts"]["jbb"]["test"].values()) for r in rows)
