"""scripts/recipes/realmix-*.sh: the training flags run-realmix.sh (BUDGET) and run-loso.sh (RECIPE) share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_text_data import write_fineharm_folder

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "scripts" / "recipes").glob("realmix-*.sh"))


def _arrays(recipe: Path) -> dict[str, list[str]]:
    """The four arrays a recipe sets, read back from a bash that sourced it."""
    script = (f'SCM_ROOT=/repo; EXTRA_VIEW_FLAGS=(); source "{recipe}"; for name in DATA_FLAGS ENCODER_DATA_FLAGS '
              'CAUSAL_FLAGS ENCODER_FLAGS EXTRA_VIEW_FLAGS; do declare -n a=$name; printf "%s=%s\\n" "$name" '
              '"${a[*]}"; unset -n a; done')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k != "REALMIX_PROMPT_EPOCHS"})
    return {name: value.split() for name, value in (line.split("=", 1) for line in done.stdout.splitlines())}


def test_the_recipes_are_the_budgets_of_run_realmix():
    assert {r.stem for r in RECIPES} == {"realmix-cpu", "realmix-cpu-v1", "realmix-full", "realmix-prompt-1ep",
                                         "realmix-prompt-3ep", "realmix-response-1ep", "realmix-views-1ep"}


def test_the_cpu_budget_is_the_both_views_recipe():
    assert _arrays(ROOT / "scripts" / "recipes" / "realmix-cpu.sh") == _arrays(
        ROOT / "scripts" / "recipes" / "realmix-views-1ep.sh")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.stem)
def test_each_recipe_sets_every_array(recipe):
    arrays = _arrays(recipe)
    assert set(arrays) == {"DATA_FLAGS", "ENCODER_DATA_FLAGS", "CAUSAL_FLAGS", "ENCODER_FLAGS", "EXTRA_VIEW_FLAGS"}
    assert arrays["CAUSAL_FLAGS"] and arrays["ENCODER_FLAGS"]


def test_the_prompt_reading_recipe_trains_three_epochs_on_the_shared_cache_and_its_one_epoch_variant_one():
    cpu = _arrays(ROOT / "scripts" / "recipes" / "realmix-prompt-3ep.sh")["CAUSAL_FLAGS"]
    one = _arrays(ROOT / "scripts" / "recipes" / "realmix-prompt-1ep.sh")["CAUSAL_FLAGS"]
    epochs = lambda flags: flags[flags.index("--num-train-epochs") + 1]  # noqa: E731
    assert epochs(cpu) == "3" and epochs(one) == "1"
    assert [f for f in cpu if f != "3"] == [f for f in one if f != "1"]  # nothing else differs
    assert "/repo/.cache/prefix-cache/realmix-cpu-smollm2-f24" in cpu and "--cache-frozen-prefix" in cpu


def test_the_response_only_recipe_is_the_one_epoch_recipe_without_the_prompt():
    one = _arrays(ROOT / "scripts" / "recipes" / "realmix-prompt-1ep.sh")
    response = _arrays(ROOT / "scripts" / "recipes" / "realmix-response-1ep.sh")
    assert response["DATA_FLAGS"] == ["--max-prompt-tokens", "0"] and one["DATA_FLAGS"] == ["--max-prompt-tokens", "64"]
    cache = lambda flags: flags[flags.index("--prefix-cache-dir") + 1]  # noqa: E731
    assert cache(response["CAUSAL_FLAGS"]) != cache(one["CAUSAL_FLAGS"])  # other sequences, another cache
    assert ([f for f in response["CAUSAL_FLAGS"] if f != cache(response["CAUSAL_FLAGS"])]
            == [f for f in one["CAUSAL_FLAGS"] if f != cache(one["CAUSAL_FLAGS"])])


def test_the_views_recipe_serves_the_response_alone_and_trains_on_the_prompt_reading_view_too():
    one = _arrays(ROOT / "scripts" / "recipes" / "realmix-prompt-1ep.sh")
    views = _arrays(ROOT / "scripts" / "recipes" / "realmix-views-1ep.sh")
    assert views["DATA_FLAGS"] == ["--max-prompt-tokens", "0"]
    assert views["EXTRA_VIEW_FLAGS"] == one["DATA_FLAGS"] == ["--max-prompt-tokens", "64"]
    assert one["EXTRA_VIEW_FLAGS"] == []  # the other recipes train on one view
    assert "/repo/.cache/prefix-cache/realmix-cpu-smollm2-views-f24" in views["CAUSAL_FLAGS"]
    shared = lambda flags: [f for f in flags if "prefix-cache" not in f and f not in ("40", "80")]  # noqa: E731
    assert shared(views["CAUSAL_FLAGS"]) == shared(one["CAUSAL_FLAGS"])  # one epoch, the same optimiser


def test_run_realmix_names_the_budgets_it_knows(tmp_path):
    realmix = write_fineharm_folder(tmp_path / "realmix", {"train": 2, "val": 2, "test": 2})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "REALMIX": str(realmix),
           "BUDGET": "gpu", "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(["bash", "scripts/run-realmix.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "BUDGET must be one of: cpu cpu-v1 full prompt-1ep prompt-3ep response-1ep views-1ep" in done.stderr and "realmix-gpu.sh" in done.stderr
    assert not (tmp_path / "out").exists()
