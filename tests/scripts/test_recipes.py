"""scripts/recipes/*.sh: the training flags run-realmix.sh (BUDGET) and run-loso.sh (RECIPE) share."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_text_data import write_fineharm_folder

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "scripts" / "recipes").glob("realmix*.sh"))


def _arrays(recipe: Path) -> dict[str, list[str]]:
    """The arrays a recipe sets, read back from a bash that sourced it."""
    script = (f'SCM_ROOT=/repo; EXTRA_VIEW_FLAGS=(); ENCODER_PARTIAL_FLAGS=(); source "{recipe}"; for name in '
              'DATA_FLAGS ENCODER_DATA_FLAGS CAUSAL_FLAGS ENCODER_FLAGS EXTRA_VIEW_FLAGS ENCODER_PARTIAL_FLAGS; do '
              'declare -n a=$name; printf "%s=%s\\n" "$name" "${a[*]}"; unset -n a; done')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return {name: value.split() for name, value in (line.split("=", 1) for line in done.stdout.splitlines())}


def _recipe(name: str) -> dict[str, list[str]]:
    return _arrays(ROOT / "scripts" / "recipes" / f"{name}.sh")


def _value(flags: list[str], flag: str) -> str:
    return flags[flags.index(flag) + 1]


def test_the_recipes_are_the_budgets_of_run_realmix():
    assert {r.stem for r in RECIPES} == {"realmix-cpu", "realmix-full", "realmix-prompt-3ep", "realmix-response-1ep",
                                         "realmix2-all-1ep", "realmix2-cpu", "realmix2-full",
                                         "realmix2-small"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.stem)
def test_each_recipe_sets_every_array_itself_and_says_what_it_is_without_dates(recipe):
    arrays = _arrays(recipe)
    assert set(arrays) == {"DATA_FLAGS", "ENCODER_DATA_FLAGS", "CAUSAL_FLAGS", "ENCODER_FLAGS", "EXTRA_VIEW_FLAGS",
                           "ENCODER_PARTIAL_FLAGS"}
    assert arrays["CAUSAL_FLAGS"] and arrays["ENCODER_FLAGS"]
    text = recipe.read_text()
    assert "source " not in text  # no recipe is an alias of another
    assert text.startswith("# ") and not re.search(r"\b20\d\d-\d\d-\d\d\b", text)  # history: results/*/README.md


def test_the_prompt_reading_recipe_trains_three_epochs_on_the_shared_cache():
    flags = _recipe("realmix-prompt-3ep")["CAUSAL_FLAGS"]
    assert _value(flags, "--num-train-epochs") == "3"
    assert "/repo/.cache/prefix-cache/realmix-cpu-smollm2-f24" in flags and "--cache-frozen-prefix" in flags


def test_the_response_only_recipe_is_the_prompt_reading_one_for_one_epoch_without_the_prompt():
    prompt, response = _recipe("realmix-prompt-3ep"), _recipe("realmix-response-1ep")
    assert response["DATA_FLAGS"] == ["--max-prompt-tokens", "0"]
    assert prompt["DATA_FLAGS"] == ["--max-prompt-tokens", "64"]
    assert _value(response["CAUSAL_FLAGS"], "--num-train-epochs") == "1"
    cache = lambda flags: _value(flags, "--prefix-cache-dir")  # noqa: E731
    assert cache(response["CAUSAL_FLAGS"]) != cache(prompt["CAUSAL_FLAGS"])  # other sequences, another cache
    shared = lambda flags: [f for f in flags if f not in (cache(flags), "1", "3")]  # noqa: E731
    assert shared(response["CAUSAL_FLAGS"]) == shared(prompt["CAUSAL_FLAGS"])


def test_the_cpu_recipe_serves_the_response_alone_and_trains_on_the_prompt_reading_view_too():
    prompt, views = _recipe("realmix-prompt-3ep"), _recipe("realmix-cpu")
    assert views["DATA_FLAGS"] == ["--max-prompt-tokens", "0"]
    assert views["EXTRA_VIEW_FLAGS"] == prompt["DATA_FLAGS"] == ["--max-prompt-tokens", "64"]
    assert prompt["EXTRA_VIEW_FLAGS"] == []  # the other recipes train on one view
    assert "/repo/.cache/prefix-cache/realmix-cpu-smollm2-views-f24" in views["CAUSAL_FLAGS"]
    assert _value(views["CAUSAL_FLAGS"], "--num-train-epochs") == "1"
    shared = lambda flags: [f for f in flags if "prefix-cache" not in f and f not in ("1", "3", "40", "80")]  # noqa
    assert shared(views["CAUSAL_FLAGS"]) == shared(prompt["CAUSAL_FLAGS"])  # the same optimiser and blocks


def test_the_full_budget_is_the_papers_on_either_data():
    assert _recipe("realmix2-full") == _recipe("realmix-full")
    full = _recipe("realmix2-full")
    assert full["DATA_FLAGS"] == [] and full["CAUSAL_FLAGS"] == ["--max-length", "4096"]
    assert full["ENCODER_PARTIAL_FLAGS"] == []  # every response evaluated


@pytest.mark.parametrize("dataset, budgets", [("realmix", "cpu full prompt-3ep response-1ep"),
                                              ("realmix2", "all-1ep cpu full small")])
def test_run_realmix_names_the_budgets_it_knows(tmp_path, dataset, budgets):
    realmix = write_fineharm_folder(tmp_path / dataset, {"train": 2, "val": 2, "test": 2})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "REALMIX": str(realmix),
           "BUDGET": "gpu", "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(["bash", "scripts/run-realmix.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert f"BUDGET must be one of: {budgets} (no scripts/recipes/{dataset}-gpu.sh" in done.stderr
    assert not (tmp_path / "out").exists()
