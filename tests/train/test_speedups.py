"""--cache-frozen-prefix, --lora-rank and --lr-schedule through train/train_qwen.py on a tiny random backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from model import SCMModel
from train.train_qwen import main, parse_args


def _run(backbone, data, out, *extra):
    argv = ["--base-model-path", str(backbone), "--data-dir", str(data), "--output-dir", str(out),
            "--report-to", "none", "--logging-steps", "1", "--per-device-train-batch-size", "4",
            "--gradient-accumulation-steps", "1", "--learning-rate", "3e-3", "--disable-tqdm", "true", *extra]
    return main(*parse_args(argv))


def test_training_on_the_cached_prefix_equals_training_without_it(tiny_causal_backbone, tiny_processed_data, tmp_path):
    flags = ("--freeze-layers", "1", "--max-steps", "4", "--eval-steps", "4", "--save-steps", "4")
    plain = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "plain", *flags)
    cached = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "cached", *flags, "--cache-frozen-prefix")
    plain_weights, cached_weights = load_file(plain / "model.safetensors"), load_file(cached / "model.safetensors")
    assert set(plain_weights) == set(cached_weights)
    for name, tensor in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    initial = SCMModel.from_backbone(str(tiny_causal_backbone)).state_dict()
    assert not torch.equal(cached_weights["backbone.layers.1.mlp.up_proj.weight"],
                           initial["backbone.layers.1.mlp.up_proj.weight"])  # the trained block learnt
    summaries = [json.loads((d / "training_summary.json").read_text()) for d in (plain, cached)]
    assert summaries[1]["result"]["eval"]["eval_loss"] == pytest.approx(summaries[0]["result"]["eval"]["eval_loss"],
                                                                         abs=1e-5)
    facts = summaries[1]["arguments"]["speedups"]
    assert facts["cache_frozen_prefix"] and facts["cache_tokens"] > 0 and facts["cache_check_max_abs_diff"] < 1e-4
    assert not (cached / ".frozen-prefix-cache").exists()


def test_lora_with_cache_resumes_and_saves_a_plain_checkpoint(tiny_causal_backbone, tiny_processed_data, tmp_path):
    out = tmp_path / "lora"
    flags = ("--freeze-layers", "1", "--cache-frozen-prefix", "--lora-rank", "4", "--eval-steps", "2",
             "--save-steps", "2", "--lr-schedule", "trainer", "--lr-scheduler-type", "linear")
    _run(tiny_causal_backbone, tiny_processed_data, out, "--max-steps", "2", *flags)
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()  # resumable peft checkpoint
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    rates = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert rates == pytest.approx([3e-3, 1.5e-3])  # the Trainer's linear schedule, to zero over 2 steps
    _run(tiny_causal_backbone, tiny_processed_data, out, "--max-steps", "4", *flags)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["result"]["global_step"] == 4 and summary["arguments"]["speedups"]["lora_rank"] == 4
    assert summary["arguments"]["lr_decay"] is None
    model = SCMModel.from_pretrained(out)  # an ordinary checkpoint: no adapter keys, loads without peft
    weights = load_file(out / "model.safetensors")
    assert not [k for k in weights if "lora_" in k or "base_layer" in k or "modules_to_save" in k]
    initial = SCMModel.from_backbone(str(tiny_causal_backbone)).state_dict()
    trained = model.state_dict()
    assert torch.equal(trained["backbone.layers.0.self_attn.q_proj.weight"],
                       initial["backbone.layers.0.self_attn.q_proj.weight"])  # frozen block: no adapter
    assert not torch.equal(trained["backbone.layers.1.self_attn.q_proj.weight"],
                           initial["backbone.layers.1.self_attn.q_proj.weight"])  # adapter merged
    assert not torch.equal(trained["holistic_scorer.weight"], initial["holistic_scorer.weight"])


def test_cache_without_frozen_blocks_names_the_fix(tiny_causal_backbone, tiny_processed_data, tmp_path):
    with pytest.raises(ValueError, match="needs 0 < --freeze-layers < 2"):
        _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "o", "--max-steps", "1", "--cache-frozen-prefix")
