"""serve/operating_point.py: which (theta, k, rule, scorer) a monitor serves and where each came from.

Precedence: explicit flags > the checkpoint's operating_point.json (its default entry, or --operating-point) > the
config's training default (with a warning naming the calibration command). Pure resolution on a hand-written file,
then the monitor, the gateway's /health, generate()'s criteria, and the issue's done-when: `bash scripts/run-scm.sh
test ...` then the gateway built as `bash scripts/run-serve.sh --model-path CKPT` builds it serves the chosen point
with no flag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from model import SCMConfig, SCMModel
from serve.gateway.app import create_app
from serve.gateway.config import GatewayArguments
from serve.gateway.server import BackgroundServer, build_gateway
from serve.generate import MonitorStoppingCriteria
from serve.monitor import StreamingMonitor
from serve.operating_point import OperatingPointError, resolve_operating_point, served_point
from tests.tiny_checkpoints import build_tiny_scm
from tests.tiny_models import tiny_qwen2_config
from utils.cli import parse_dataclasses
from utils.io_utils import DataFormatError

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"theta": 0.5, "delay_k": 1, "scorer": "token", "task": "scm"}
WHEN = "2026-01-31T12:00:00+0000"
ORIGIN = f"(leak_free, chosen on val of data/realmix2 by `bash scripts/run-scm.sh test` at {WHEN})"
# /health (an open route) names the data folder by its name only.
PUBLIC_ORIGIN = f"(leak_free, chosen on val of realmix2 by `bash scripts/run-scm.sh test` at {WHEN})"


def _point(selection, theta, k, scorer="token", **extra):
    stats = {"macro_f1": 0.9, "harmful_recall": 0.8, "harmful_precision": 0.9, "benign_stop_rate": 0.01,
             "mean_share": 0.2, "mean_share_all": 0.3, "n_harmful": 10, "n_benign": 90}
    return {"selection": selection, "theta": theta, "k": k, "rule": "delay-k", "scorer": scorer, "counting": "all",
            "selected_on": "val", "reported_on": "test", "validation": stats, "test": stats, **extra}


def write_points(folder: Path, budget: bool = True, default: str = "leak_free") -> Path:
    """A hand-written operating_point.json (format 1): token leak_free (0.9, 9), early (0.7, 2), budget (0.8, 5);
    holistic leak_free (0.6, 3), budget (0.9, 7)."""
    token = {"leak_free": _point("leak_free", 0.9, 9), "leak_free_early": _point("leak_free_early", 0.7, 2)}
    if budget:
        token["leak_free_budget"] = _point("leak_free_budget", 0.8, 5, max_benign_stop_rate=0.02)
    content = {
        "schema": "scm-operating-point", "format_version": 1, "default": default, "scorer": "token",
        "rule": "delay-k", "points": token,
        **({} if budget else {"unavailable": {
            "leak_free_budget": "no (theta, k) of the grid stops at most 2% of the benign val responses"}}),
        "other_scorers": {"holistic": {"points": {
            "leak_free": _point("leak_free", 0.6, 3, "holistic"),
            "leak_free_early": _point("leak_free_early", 0.6, 3, "holistic"),
            "leak_free_budget": _point("leak_free_budget", 0.9, 7, "holistic", max_benign_stop_rate=0.02)}}},
        "max_benign_stop_rate": 0.02, "selection_tolerance": 0.01,
        "source": {"data_dir": "data/realmix2", "evaluation_dir": "runs/eval/scm",
                   "driver": "bash scripts/run-scm.sh test",
                   "script": "test.test_qwen_partial", "selected_on": "val", "reported_on": "test"},
        "replaces": None, "written_at": WHEN}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "operating_point.json").write_text(json.dumps(content))
    return folder


@pytest.fixture()
def calibrated(tmp_path) -> Path:
    return write_points(tmp_path / "ckpt")


def _values(served):
    return served.theta, served.k, served.rule, served.scorer


# ------------------------------------------------------------------------------------------- resolution


def test_no_flag_serves_the_files_default_entry(calibrated):
    served = resolve_operating_point(calibrated, CONFIG)
    assert _values(served) == (0.9, 9, "delay-k", "token") and served.selection == "leak_free"
    assert served.sources == {"theta": "operating_point.json", "k": "operating_point.json",
                              "scorer": "operating_point.json"}
    assert served.description == f"theta 0.9, k 9, delay-k, token scorer from operating_point.json {ORIGIN}"
    assert served.warning is None and served.calibrated
    public = served.public()
    assert (public["source"], public["data"], public["chosen_by"], public["chosen_at"]) == (
        "operating_point.json", "realmix2", "bash scripts/run-scm.sh test", WHEN)
    assert public["validation"]["benign_stop_rate"] == 0.01 and str(calibrated) not in json.dumps(public)
    assert "data_dir" not in public and "data/realmix2" not in json.dumps(public)
    assert public["description"] == f"theta 0.9, k 9, delay-k, token scorer from operating_point.json {PUBLIC_ORIGIN}"


def test_the_public_view_shows_no_path(tmp_path):
    """/health is an open route: of the recorded data folder only its name, and the driver only when it is one of the
    repository's own commands (a hand-edited file may hold anything)."""
    folder = write_points(tmp_path / "ckpt")
    content = json.loads((folder / "operating_point.json").read_text())
    content["source"].update(data_dir="/home/someone/private/data/realmix2/", driver="/opt/tools/evaluate.sh --x")
    (folder / "operating_point.json").write_text(json.dumps(content))
    served = resolve_operating_point(folder, CONFIG)
    public = served.public()
    assert public["data"] == "realmix2" and public["chosen_by"] is None
    shown = json.dumps(public)
    assert "/home" not in shown and "/opt" not in shown and "private" not in shown
    assert "of realmix2 by `an evaluation`" in public["description"]
    assert "/home/someone/private/data/realmix2/" in served.description  # the CLI's own line keeps what was recorded


def test_explicit_flags_win_field_by_field(calibrated):
    served = resolve_operating_point(calibrated, CONFIG, theta=0.7)
    assert _values(served) == (0.7, 9, "delay-k", "token")
    assert served.sources["theta"] == "flag" and served.sources["k"] == "operating_point.json"
    assert served.description.startswith("theta 0.7 (--theta), k 9, delay-k, token scorer from operating_point.json")
    both = resolve_operating_point(calibrated, CONFIG, theta=0.7, k=3)
    assert _values(both) == (0.7, 3, "delay-k", "token") and both.public()["source"] == "mixed"
    everything = resolve_operating_point(calibrated, CONFIG, theta=0.7, k=3, scorer="holistic")
    assert everything.public()["source"] == "flags" and everything.selection is None and not everything.calibrated
    assert everything.description == "theta 0.7 (--theta), k 3 (--k), delay-k, holistic scorer (--scorer)"
    # --scorer alone picks that scorer's recorded point.
    assert _values(resolve_operating_point(calibrated, CONFIG, scorer="holistic")) == (0.6, 3, "delay-k", "holistic")


@pytest.mark.parametrize("choice, expected", [("leak_free", (0.9, 9)), ("leak_free_early", (0.7, 2)),
                                              ("budget", (0.8, 5)), ("checkpoint", (0.5, 1))])
def test_operating_point_choice(calibrated, choice, expected):
    served = resolve_operating_point(calibrated, CONFIG, choice=choice)
    assert (served.theta, served.k) == expected and served.warning is None
    if choice == "budget":
        assert served.selection == "leak_free_budget" and served.public()["max_benign_stop_rate"] == 0.02
        assert (served.theta, served.k) == _values(resolve_operating_point(calibrated, CONFIG,
                                                                           max_benign_stop_rate=0.02))[:2]
    if choice == "checkpoint":
        assert served.description == ("theta 0.5, k 1, delay-k, token scorer: the checkpoint's training default "
                                      "(--operating-point checkpoint)")


def test_a_file_default_other_than_leak_free_is_served(tmp_path):
    folder = write_points(tmp_path / "ckpt", default="leak_free_budget")
    served = resolve_operating_point(folder, CONFIG)
    assert (served.theta, served.k, served.selection) == (0.8, 5, "leak_free_budget")


def test_points_the_file_does_not_hold_are_errors_that_name_the_fix(tmp_path):
    folder = write_points(tmp_path / "ckpt", budget=False)
    with pytest.raises(OperatingPointError, match=r"--operating-point budget: .*holds no leak_free_budget point for "
                                                  r"the token scorer \(no \(theta, k\) of the grid stops at most 2%.*"
                                                  r"--max-benign-stop-rate 0.05.*--operating-point leak_free"):
        resolve_operating_point(folder, CONFIG, choice="budget")
    calibrated = write_points(tmp_path / "other")
    with pytest.raises(OperatingPointError, match=r"holds the budget point for at most 2% benign stops, not 1%: "
                                                  r"re-run `bash scripts/run-scm.sh test --model-path .*other "
                                                  r"--data-dir DATA --output-dir OUT --max-benign-stop-rate 0.01`"):
        resolve_operating_point(calibrated, CONFIG, max_benign_stop_rate=0.01)
    with pytest.raises(OperatingPointError, match="does not go with --operating-point leak_free"):
        resolve_operating_point(calibrated, CONFIG, choice="leak_free", max_benign_stop_rate=0.02)
    with pytest.raises(OperatingPointError, match="is a delay-k point"):
        resolve_operating_point(calibrated, CONFIG, choice="leak_free", rule="consecutive-n")
    with pytest.raises(OperatingPointError, match="'best' is unknown"):
        resolve_operating_point(calibrated, CONFIG, choice="best")
    empty = tmp_path / "uncalibrated"
    empty.mkdir()
    with pytest.raises(OperatingPointError, match=r"holds no operating_point.json; calibrate it with `bash "
                                                  r"scripts/run-scm.sh test --model-path .*--operating-point "
                                                  r"checkpoint"):
        resolve_operating_point(empty, CONFIG, choice="leak_free")
    (empty / "operating_point.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(DataFormatError, match="is not an operating-point file"):
        resolve_operating_point(empty, CONFIG)


def test_a_scorer_the_file_does_not_hold(tmp_path):
    folder = write_points(tmp_path / "ckpt")
    content = json.loads((folder / "operating_point.json").read_text())
    content["other_scorers"] = {}  # a token-only evaluation
    (folder / "operating_point.json").write_text(json.dumps(content))
    served = resolve_operating_point(folder, CONFIG, scorer="holistic")
    assert _values(served) == (0.5, 1, "delay-k", "holistic") and not served.calibrated
    assert served.description.endswith("; operating_point.json holds no points for the holistic scorer (it has token)")
    with pytest.raises(OperatingPointError, match="holds no points for the holistic scorer .*leave --scorer out"):
        resolve_operating_point(folder, CONFIG, scorer="holistic", choice="leak_free")


def test_another_rule_ignores_the_files_delay_k_points(calibrated):
    served = resolve_operating_point(calibrated, CONFIG, rule="consecutive-n")
    assert _values(served) == (0.5, None, "consecutive-n", "token") and served.warning is None
    assert "operating_point.json holds delay-k points, not consecutive-n ones" in served.description


def test_without_a_file_the_training_default_is_served_with_a_warning(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    served = resolve_operating_point(folder, CONFIG)
    assert _values(served) == (0.5, 1, "delay-k", "token") and not served.calibrated
    assert served.warning == (f"no operating_point.json in {folder}: serving the training default theta 0.5 / k 1; "
                              f"calibrate with `bash scripts/run-scm.sh test --model-path {folder} --data-dir DATA "
                              f"--output-dir OUT`")
    public = served.public()
    assert public["warning"].startswith("no operating_point.json in CKPT: serving the training default theta 0.5 / "
                                        "k 1; calibrate with `bash scripts/run-scm.sh test --model-path CKPT")
    assert str(tmp_path) not in json.dumps(public)
    # A qwen-full checkpoint is calibrated by its own driver; explicit theta and k need no calibration.
    qwen = resolve_operating_point(folder, {**CONFIG, "task": "qwen-full", "scorer": "holistic"})
    assert "bash scripts/run-qwen-partial.sh test --model-path" in qwen.warning
    assert resolve_operating_point(folder, CONFIG, theta=0.7, k=2).warning is None


# ------------------------------------------------------------------------------------------- the runtime


@pytest.fixture(scope="module")
def smol_checkpoint(tmp_path_factory) -> Path:
    from model.assets import smollm2_path

    return build_tiny_scm(tmp_path_factory.mktemp("tiny-scm"), smollm2_path(), theta=0.5, delay_k=1)


def test_monitor_and_generate_criteria_serve_the_recorded_point(smol_checkpoint, tmp_path, caplog):
    folder = write_points(shutil.copytree(smol_checkpoint, tmp_path / "ckpt"))
    caplog.set_level(logging.INFO)
    monitor = StreamingMonitor.from_pretrained(folder, device="cpu")
    assert (monitor.theta, monitor.rule.name, monitor.scorer) == (0.9, "delay-9", "token")
    assert f"operating point: theta 0.9, k 9, delay-k, token scorer from operating_point.json {ORIGIN}" in caplog.text
    criteria = MonitorStoppingCriteria(monitor, [monitor.start("Hi")])
    assert criteria.operating_point is monitor.operating_point and criteria.operating_point.selection == "leak_free"
    assert "generate() stopping criteria at theta 0.9, k 9" in caplog.text
    assert served_point(monitor)["source"] == "operating_point.json"
    monitor.theta = 0.3  # changed in code after loading: /health must not claim the file's point any more
    assert served_point(monitor)["source"] == "code" and served_point(monitor)["theta"] == 0.3

    tuned = StreamingMonitor.from_pretrained(folder, device="cpu", k=4, operating_point="budget")
    assert (tuned.theta, tuned.rule.name) == (0.8, "delay-4")
    caplog.clear()
    plain = StreamingMonitor.from_pretrained(smol_checkpoint, device="cpu")
    assert (plain.theta, plain.rule.name) == (0.5, "delay-1") and not plain.operating_point.calibrated
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "no operating_point.json in" in warnings[0].getMessage()
    assert "calibrate with `bash scripts/run-scm.sh test --model-path" in warnings[0].getMessage()
    with pytest.raises(OperatingPointError, match="holds no operating_point.json"):
        StreamingMonitor.from_pretrained(smol_checkpoint, device="cpu", operating_point="budget")


def _gateway(argv: list[str]):
    (args,) = parse_dataclasses((GatewayArguments,), argv=["--upstream", "http://127.0.0.1:9/v1", "--device", "cpu",
                                                            *argv])
    return build_gateway(args)


def _health(gateway) -> dict:
    try:
        with BackgroundServer(create_app(gateway)) as server:
            return httpx.get(f"{server.url}/health").json()
    finally:
        asyncio.run(gateway.aclose())


def test_gateway_health_reports_the_point_and_its_source(smol_checkpoint, tmp_path):
    folder = write_points(shutil.copytree(smol_checkpoint, tmp_path / "ckpt"))
    body = _health(_gateway(["--model-path", str(folder)]))
    point = body["operating_point"]
    assert (point["theta"], point["k"], point["scorer"], point["selection"], point["source"]) == (
        0.9, 9, "token", "leak_free", "operating_point.json")
    assert point["data"] == "realmix2" and point["description"].endswith(PUBLIC_ORIGIN)
    assert "data/realmix2" not in json.dumps(body)  # /health shows no path, not even a relative one
    assert body["monitor"]["theta"] == 0.9 and body["monitor"]["rule"] == "delay-9"
    assert str(tmp_path) not in json.dumps(point)
    flagged = _health(_gateway(["--model-path", str(folder), "--k", "4", "--operating-point", "budget"]))
    assert (flagged["operating_point"]["theta"], flagged["operating_point"]["k"]) == (0.8, 4)
    assert flagged["operating_point"]["sources"]["k"] == "flag" and flagged["monitor"]["rule"] == "delay-4"
    plain = _health(_gateway(["--model-path", str(smol_checkpoint)]))["operating_point"]
    assert (plain["theta"], plain["k"], plain["calibrated"], plain["source"]) == (0.5, 1, False, "training default")
    assert plain["warning"].startswith("no operating_point.json in CKPT: serving the training default theta 0.5 / k 1")
    with pytest.raises(OperatingPointError, match="--operating-point budget"):
        _gateway(["--model-path", str(smol_checkpoint), "--operating-point", "budget"])


# ------------------------------------------------------------------------------------------- done when


def test_run_scm_test_then_run_serve_serves_the_chosen_point(tiny_causal_backbone, tiny_processed_data, tmp_path):
    checkpoint = tmp_path / "ckpt"
    torch.manual_seed(0)
    SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict(), task="scm", pooling_pad_token_id=0,
                       theta=0.5, delay_k=1)).save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_causal_backbone / name, checkpoint / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "run-scm.sh"), "test", "--model-path", "ckpt", "--data-dir",
                           str(tiny_processed_data), "--output-dir", "eval", "--max-k", "8"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    chosen = summary["partial"]["token"]["leak_free"]
    recorded = json.loads((checkpoint / "operating_point.json").read_text())
    assert recorded["source"]["data_dir"] == os.path.relpath(tiny_processed_data, REPO)  # never absolute
    assert "wrote ckpt/operating_point.json: token scorer, leak_free theta" in done.stderr

    # What `bash scripts/run-serve.sh --model-path ckpt` runs (python -m serve.gateway), with no operating-point flag.
    gateway = _gateway(["--model-path", str(checkpoint)])
    assert (gateway.monitor.theta, gateway.monitor.rule.name, gateway.monitor.scorer) == (
        chosen["theta"], f"delay-{chosen['k']}", "token")
    point = _health(gateway)["operating_point"]
    assert (point["theta"], point["k"], point["selection"], point["source"]) == (
        chosen["theta"], chosen["k"], "leak_free", "operating_point.json")
    assert point["chosen_by"] == "bash scripts/run-scm.sh test" and point["chosen_at"] == recorded["written_at"]
    assert point["validation"]["macro_f1"] == pytest.approx(chosen["selection_score"])
