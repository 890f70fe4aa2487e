"""scripts/_common.sh: the drivers take the user's paths from the folder the user stands in.

Before the fix the drivers changed to the repository root, so a relative --input that exists where the user stood
was "not found" and a relative output landed inside the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/_common.sh"; {script}'], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ})


def test_common_sh_stays_in_the_users_folder_and_names_repository_paths_from_there(tmp_path):
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    completed = _bash('pwd; repo_path runs/scm-default; user_path out/x.json; echo "$PYTHONSAFEPATH"', elsewhere)
    assert completed.returncode == 0, completed.stderr
    cwd, default, user, safe = completed.stdout.split("\n")[:4]
    assert Path(cwd) == elsewhere
    assert (elsewhere / default).resolve() == ROOT / "runs" / "scm-default"
    assert not default.startswith("/") and user == str(elsewhere / "out" / "x.json") and safe == "1"
    at_root = _bash("repo_path runs/scm-default", ROOT)
    assert at_root.stdout.strip() == "runs/scm-default"


def test_the_projects_packages_win_over_a_users_folder_of_the_same_name(tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("raise RuntimeError('shadowed')\n")
    completed = _bash('python -c "import utils.io_utils as m; print(m.__file__)"', tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert Path(completed.stdout.strip()) == ROOT / "utils" / "io_utils.py"


def test_a_driver_reads_and_writes_relative_paths_in_the_users_folder(tmp_path):
    from tests.utils.evaluation.test_report import make_summary

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(make_summary()))
    completed = subprocess.run(["bash", str(ROOT / "scripts" / "run-report.sh"), "eval", "--output", "report.md"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "# SCM evaluation report" in (tmp_path / "report.md").read_text()
    assert not (ROOT / "report.md").exists()


def test_enter_repo_takes_the_callers_paths_first_then_works_from_the_root(tmp_path):
    completed = _bash('OUT=results/x; RUNS=""; enter_repo OUT RUNS; pwd; echo "$OUT"; echo "[$RUNS]"', tmp_path)
    assert completed.returncode == 0, completed.stderr
    cwd, out, runs = completed.stdout.split("\n")[:3]
    assert Path(cwd) == ROOT and out == str(tmp_path / "results" / "x") and runs == "[]"


def test_timed_step_replaces_its_own_row_and_keeps_the_others(tmp_path):
    timings = tmp_path / "timings.tsv"
    timings.write_text("data\t8\ntrain-scm\t999\neval-scm\t245\n")
    done = _bash(f'timed_step "{timings}" train-scm true; timed_step "{timings}" eval-lexical true', tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in timings.read_text().splitlines()]
    assert [name for name, _ in rows] == ["data", "eval-scm", "train-scm", "eval-lexical"]
    assert dict(rows)["data"] == "8" and dict(rows)["eval-scm"] == "245" and int(dict(rows)["train-scm"]) < 999
    failed = _bash(f'timed_step "{timings}" data false', tmp_path)  # a failing step stops the driver, row untouched
    assert failed.returncode != 0 and dict(line.split("\t") for line in timings.read_text().splitlines())["data"] == "8"
    fresh = tmp_path / "new" / "timings.tsv"
    fresh.parent.mkdir()
    assert _bash(f'timed_step "{fresh}" first true', tmp_path).returncode == 0
    assert fresh.read_text().startswith("first\t")


def test_is_current_compares_times_unless_fresh(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    os.utime(tmp_path / "model.json", (1_000, 1_000))
    (tmp_path / "eval.json").write_text("{}")
    check = f'is_current "{tmp_path}/eval.json" "{tmp_path}/model.json"'
    assert _bash(check, tmp_path).returncode == 0
    assert _bash(f"FRESH=1 {check}", tmp_path).returncode != 0
    assert _bash(f'is_current "{tmp_path}/missing.json" "{tmp_path}/model.json"', tmp_path).returncode != 0
    os.utime(tmp_path / "eval.json", (500, 500))  # evaluated before the model was trained again
    assert _bash(check, tmp_path).returncode != 0


def test_an_evaluation_counts_only_for_the_model_and_folder_it_records(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"model": {"path": "runs/a"}, "data": {"data_dir": "data/x"}}))
    same = _bash(f'evaluated_with "{summary}" runs/a/ ./data/x && echo same', tmp_path)
    other_model = _bash(f'evaluated_with "{summary}" runs/b data/x || echo other', tmp_path)
    other_data = _bash(f'evaluated_with "{summary}" runs/a data/y || echo other', tmp_path)
    assert (same.stdout.strip(), other_model.stdout.strip(), other_data.stdout.strip()) == ("same", "other", "other")


def test_inside_repo_names_a_path_inside_the_current_folder_relatively(tmp_path):
    inside = _bash(f'inside_repo "{tmp_path}/results/x"; inside_repo /elsewhere/y', tmp_path)
    assert inside.stdout.split() == ["results/x", "/elsewhere/y"]
