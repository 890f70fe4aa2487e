"""scripts/run-realmix.sh end to end on a hand-made realmix-like folder with tiny random backbones (real tokenizers):
every model trained with the recipe's flags, evaluated, one report written; a second run redoes nothing, and a model
trained by another recipe is refused instead of standing in the new recipe's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.drivers import run_driver
from tests.tiny_text_data import write_fineharm_folder

# Both views, as BUDGET=cpu: the response alone served, 8 prompt tokens as the extra view; one step per model.
RECIPE = ("DATA_FLAGS=(--max-prompt-tokens 0); EXTRA_VIEW_FLAGS=(--max-prompt-tokens 8)\n"
          "ENCODER_DATA_FLAGS=(--max-prompt-tokens 8)\n"
          "CAUSAL_FLAGS=(--max-steps 1)\nENCODER_FLAGS=(--max-steps 1)\n")
EVALUATIONS = ["scm", "qwen-full", "qwen-partial", "encoder-full", "encoder-partial", "lexical-full", "lexical-partial"]


def _env(tmp_path: Path, backbones: dict[str, str]) -> dict[str, str]:
    return {**backbones, "REALMIX": str(tmp_path / "realmix"), "RECIPE": str(tmp_path / "tiny.sh"),
            "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), "PROCESSED": str(tmp_path / "data")}


@pytest.mark.slow  # about 2 minutes on 2 idle cores: some 20 Python processes per run
@pytest.mark.timeout(1800)
def test_a_recipe_end_to_end_then_nothing_redone_then_another_recipe_refused(driver_backbones, tmp_path):
    write_fineharm_folder(tmp_path / "realmix", {"train": 24, "val": 12, "test": 12})
    (tmp_path / "tiny.sh").write_text(RECIPE)
    env = _env(tmp_path, driver_backbones)
    done = run_driver("scripts/run-realmix.sh", env)
    assert done.returncode == 0, done.stderr[-3000:]

    out, runs = tmp_path / "out", tmp_path / "runs"
    for name in EVALUATIONS:
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["eval_split"] == "test" and summary["rows"], name
    report = (out / "report.md").read_text()
    assert all(f"{name}/summary.json" in report or name in report for name in EVALUATIONS)
    # SCM trained on both views, serves the first and was evaluated on it
    trained = json.loads((runs / "scm" / "training_summary.json").read_text())
    assert [m["max_prompt_tokens"] for m in trained["data"]["meta"]] == [0, 8]
    assert json.loads((runs / "scm" / "config.json").read_text())["max_prompt_tokens"] == 0
    assert json.loads((out / "scm" / "summary.json").read_text())["data"]["meta"]["max_prompt_tokens"] == 0
    # processed folders are named after realmix, the tokenizer and the flags: one per view, one for MiniLM
    folders = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "data").iterdir())
    assert folders == ["realmix-minilm", "realmix-smollm2", "realmix-smollm2"]
    # each model sits beside the command that trained it
    assert all((runs / f"{name}.command").is_file() for name in ("scm", "qwen-full", "encoder", "lexical"))
    assert "--max-steps 1" in (runs / "scm.command").read_text()
    timings = (out / "timings.tsv").read_text()
    assert {"data-smollm2", "data-smollm2-extra-view", "data-minilm", "train-scm", "train-qwen-full", "train-encoder",
            "train-lexical"} | {f"eval-{name}" for name in EVALUATIONS} == {
                line.split("\t")[0] for line in timings.splitlines()}

    again = run_driver("scripts/run-realmix.sh", env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already trained") == 4 and again.stdout.count("already evaluated") == len(EVALUATIONS)
    assert (out / "timings.tsv").read_text() == timings

    # another recipe in the same RUNS: refused with the fix, the report of the first left as it was
    (tmp_path / "tiny.sh").write_text(RECIPE.replace("CAUSAL_FLAGS=(--max-steps 1)", "CAUSAL_FLAGS=(--max-steps 2)"))
    other = run_driver("scripts/run-realmix.sh", env)
    assert other.returncode == 2
    assert f"{runs}/scm was trained by another command than BUDGET=tiny's" in other.stderr
    assert "set RUNS=" in other.stderr and (out / "report.md").read_text() == report


def test_a_model_trained_by_another_command_is_refused_not_reused(driver_backbones, tmp_path):
    write_fineharm_folder(tmp_path / "realmix", {"train": 8, "val": 4, "test": 4})
    (tmp_path / "tiny.sh").write_text(RECIPE)
    scm = tmp_path / "runs" / "scm"  # an earlier recipe's SCM (a run before NAME.command files: none beside it)
    scm.mkdir(parents=True)
    (scm / "training_summary.json").write_text("{}")
    done = run_driver("scripts/run-realmix.sh", _env(tmp_path, driver_backbones))
    assert done.returncode == 2
    assert f"{scm} was trained by another command than BUDGET=tiny's" in done.stderr and "set RUNS=" in done.stderr
    assert not (tmp_path / "out" / "scm").exists() and not (tmp_path / "runs" / "scm.command").exists()


def test_models_and_seed_run_one_model_in_the_seeds_own_folders(driver_backbones, tmp_path):
    write_fineharm_folder(tmp_path / "realmix", {"train": 16, "val": 8, "test": 8})
    (tmp_path / "tiny.sh").write_text(RECIPE)
    env = {**_env(tmp_path, driver_backbones), "MODELS": "scm", "SEED": "7", "RUNS": str(tmp_path / "runs-seed7"),
           "OUT": str(tmp_path / "out-seed7")}
    done = run_driver("scripts/run-realmix.sh", env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--seed 7" in (tmp_path / "runs-seed7" / "scm.command").read_text()
    assert sorted(p.name for p in (tmp_path / "runs-seed7").iterdir()) == ["scm", "scm.command"]
    assert json.loads((tmp_path / "runs-seed7" / "scm" / "training_summary.json").read_text())["arguments"][
        "training"]["seed"] == 7
    assert (tmp_path / "out-seed7" / "scm" / "summary.json").is_file()
    assert "out-seed7/scm" in (tmp_path / "out-seed7" / "report.md").read_text()
    for bad, message in (({"MODELS": "bert"}, "unknown model bert in MODELS"),
                         ({"SEED": "x1"}, "SEED must be a non-negative integer")):
        refused = run_driver("scripts/run-realmix.sh", {**env, **bad})
        assert refused.returncode == 2 and message in refused.stderr
