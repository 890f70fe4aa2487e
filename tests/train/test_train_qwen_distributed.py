"""train/train_qwen.py under torchrun: two CPU processes (gloo) really train data-parallel through the Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.train_qwen import parse_args

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_shards_the_data_and_keeps_the_ranks_weights_equal(tiny_causal_backbone, tiny_processed_data,
                                                                    tmp_path):
    records, out = tmp_path / "records", tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.train.ddp_worker", str(records),
               "--base-model-path", str(tiny_causal_backbone), "--data-dir", str(tiny_processed_data),
               "--output-dir", str(out), "--report-to", "none", "--limit-train", "16", "--num-train-epochs", "1",
               "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "1",
               "--eval-steps", "2", "--save-steps", "2", "--learning-rate", "3e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world_size"], r["parallel_mode"]) for r in ranks] == [(2, "distributed")] * 2
    # One epoch of 16 examples, batch 4 per rank: 2 steps, and each rank trains on its own half.
    train = [json.loads(line)["input_ids"] for line in (tiny_processed_data / "train.jsonl").read_text().splitlines()]
    halves = [{tuple(ids) for ids in r["seen"]} for r in ranks]
    assert [len(r["seen"]) for r in ranks] == [8, 8] and [r["global_step"] for r in ranks] == [2, 2]
    assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == {tuple(ids) for ids in train[:16]}
    # Gradients were averaged across the ranks: bit-identical weights, and not the initial ones.
    assert ranks[0]["weights"] == ranks[1]["weights"] != ranks[0]["initial_weights"]
    summary = json.loads((out / "training_summary.json").read_text())
    assert (summary["arguments"]["world_size"], summary["arguments"]["examples_per_step"]) == (2, 8)
    assert summary["result"]["global_step"] == 2 and (out / "model.safetensors").is_file()


def test_deepspeed_without_the_package_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto"}))
    with pytest.raises(SystemExit):
        parse_args(["--base-model-path", "x", "--data-dir", "y", "--deepspeed", str(config)])
    assert "--deepspeed needs the deepspeed package" in capsys.readouterr().err
