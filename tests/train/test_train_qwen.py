"""train/train_qwen.py end to end on a tiny random backbone: it learns, saves, resumes and reloads."""

from __future__ import annotations

import json

import pytest
import torch

from model import SCMModel
from train.train_qwen import main, parse_args
from utils.io_utils import DataFormatError


def _run(backbone, data, out, *extra):
    argv = ["--base-model-path", str(backbone), "--data-dir", str(data), "--output-dir", str(out),
            "--report-to", "none", "--logging-steps", "1", "--per-device-train-batch-size", "4",
            "--gradient-accumulation-steps", "1", "--learning-rate", "3e-3", *extra]
    return main(*parse_args(argv))


def test_scm_training_learns_and_checkpoint_reloads(tiny_causal_backbone, tiny_processed_data, tmp_path):
    out = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "scm", "--max-steps", "12",
               "--eval-steps", "6", "--save-steps", "6", "--lr-decay", "1.0")
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["model"]["alpha"] == 0.6 and summary["model"]["gamma"] == 1.0
    assert summary["arguments"]["training"]["train_sampling_strategy"] == "group_by_length"
    assert summary["result"]["global_step"] == 12
    assert summary["result"]["last_logged_loss"] < summary["result"]["first_logged_loss"]
    model = SCMModel.from_pretrained(out)
    assert model.config.task == "scm" and model.config.alpha == 0.6
    # The saved backbone is no longer the random initial one.
    initial = SCMModel.from_backbone(str(tiny_causal_backbone))
    changed = [n for n, p in model.backbone.named_parameters()
               if not torch.equal(p, dict(initial.backbone.named_parameters())[n])]
    assert len(changed) > 0
    assert (out / "tokenizer_config.json").is_file() and (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # nothing pickled in the final folder


def test_per_loss_values_are_logged(tiny_causal_backbone, tiny_processed_data, tmp_path):
    _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "scm", "--max-steps", "2")
    state = json.loads(next((tmp_path / "scm").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert {"token_loss", "holistic_loss", "logic_loss"} <= set(logged[0])


def test_qwen_full_uses_holistic_loss_only(tiny_causal_backbone, tiny_processed_data, tmp_path):
    out = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "full", "--task", "qwen-full", "--max-steps", "2")
    model = SCMModel.from_pretrained(out)
    assert (model.config.alpha, model.config.gamma, model.config.task) == (0.0, 0.0, "qwen-full")
    # The paper's pooling, with the tokenizer's pad id (Qwen2.5: <|endoftext|>, also its EOS) recorded.
    assert (model.config.holistic_pooling, model.config.pooling_pad_token_id) == ("last-non-pad", 151643)


def test_the_old_pooling_rule_is_a_named_option(tiny_causal_backbone, tiny_processed_data, tmp_path):
    out = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "old", "--max-steps", "1",
               "--holistic-pooling", "last-attended")
    assert SCMModel.from_pretrained(out).config.holistic_pooling == "last-attended"
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["model"]["holistic_pooling"] == "last-attended"


def test_resume_continues_from_last_checkpoint(tiny_causal_backbone, tiny_processed_data, tmp_path):
    out = tmp_path / "resume"
    _run(tiny_causal_backbone, tiny_processed_data, out, "--max-steps", "2", "--save-steps", "2", "--eval-steps", "2")
    _run(tiny_causal_backbone, tiny_processed_data, out, "--max-steps", "4", "--save-steps", "2", "--eval-steps", "2")
    summary = json.loads((out / "training_summary.json").read_text())
    # Resumed at step 2: only 2 more optimisation steps were run in the second call.
    assert summary["result"]["global_step"] == 4
    assert summary["result"]["train"]["train_steps_per_second"] is not None
    assert (out / "checkpoint-4").is_dir()


def test_truncation_is_counted(tiny_causal_backbone, tiny_processed_data, tmp_path):
    out = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "trunc", "--max-steps", "1", "--max-length", "8")
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["data"]["train_truncated"] > 0 and summary["data"]["max_length"] == 8


def test_data_from_another_tokenizer_is_rejected(tiny_causal_backbone, tiny_processed_data, tmp_path):
    data = tmp_path / "big-ids"
    data.mkdir()
    for split in ("train", "val"):
        lines = (tiny_processed_data / f"{split}.jsonl").read_text().splitlines()
        record = json.loads(lines[0])
        record["input_ids"][0] = 100_000  # beyond the tiny 512-token vocabulary
        (data / f"{split}.jsonl").write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    with pytest.raises(DataFormatError, match="does not fit the vocabulary"):
        _run(tiny_causal_backbone, data, tmp_path / "o", "--max-steps", "1")


def test_missing_data_dir_names_the_fix(tiny_causal_backbone, tmp_path):
    with pytest.raises(FileNotFoundError, match="run-data.sh"):
        _run(tiny_causal_backbone, tmp_path / "nowhere", tmp_path / "o", "--max-steps", "1")


def test_missing_backbone_names_the_fix(tiny_processed_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.assets"):
        _run(tmp_path / "no-model", tiny_processed_data, tmp_path / "o", "--max-steps", "1")


def test_unknown_flag_is_an_error():
    with pytest.raises(SystemExit):
        parse_args(["--base-model-path", "x", "--data-dir", "y", "--alpah", "0.3"])


def test_several_data_folders_with_weights(tiny_causal_backbone, tiny_processed_data, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_processed_data, other)
    argv = ["--base-model-path", str(tiny_causal_backbone), "--data-dir", str(tiny_processed_data), str(other),
            "--data-weights", "1", "0.25", "--output-dir", str(tmp_path / "mixed"), "--report-to", "none",
            "--max-steps", "1"]
    model_args, train_args = parse_args(argv)
    assert model_args.data_dir == [str(tiny_processed_data), str(other)] and model_args.data_weights == [1.0, 0.25]
    summary = json.loads((main(model_args, train_args) / "training_summary.json").read_text())
    assert summary["data"]["train_examples"] == 48 + 12 and summary["data"]["val_examples"] == 24
    assert [s["train"]["used"] for s in summary["data"]["sources"]] == [48, 12]


def test_paper_precision_trains_bf16_weights_with_decay_on_every_parameter(tiny_causal_backbone, tiny_processed_data,
                                                                           tmp_path):
    out = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "paper", "--max-steps", "2", "--paper-precision",
               "--no-length-grouping")
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["arguments"]["training"]["train_sampling_strategy"] == "random"  # the paper's sampler
    assert (summary["arguments"]["precision"], summary["arguments"]["weights_dtype"]) == ("paper", "bfloat16")
    assert summary["arguments"]["training"]["bf16"] is False  # the weights are bf16, nothing autocasts
    assert "every one" in summary["arguments"]["optimizer"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    model = SCMModel.from_pretrained(out, dtype=torch.bfloat16)
    initial = SCMModel.from_backbone(str(tiny_causal_backbone), dtype=torch.bfloat16)
    trained, start = dict(model.named_parameters()), dict(initial.named_parameters())
    assert not torch.equal(trained["backbone.layers.0.mlp.up_proj.weight"], start["backbone.layers.0.mlp.up_proj.weight"])


def test_the_checkpoint_records_its_datas_prompt_cut(tiny_causal_backbone, tiny_processed_data, tmp_path):
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(tiny_processed_data, cut)
    meta = json.loads((cut / "meta.json").read_text())
    (cut / "meta.json").write_text(json.dumps({**meta, "max_prompt_tokens": 5}))
    out = _run(tiny_causal_backbone, cut, tmp_path / "scm", "--max-steps", "1")
    assert SCMModel.from_pretrained(out).config.max_prompt_tokens == 5
    whole = _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "whole", "--max-steps", "1")
    assert SCMModel.from_pretrained(whole).config.max_prompt_tokens is None
    # Folders cut differently cannot make one served monitor.
    with pytest.raises(DataFormatError, match="keep different prompt lengths"):
        main(*parse_args(["--base-model-path", str(tiny_causal_backbone), "--data-dir", str(tiny_processed_data),
                          str(cut), "--output-dir", str(tmp_path / "mixed"), "--report-to", "none", "--max-steps", "1"]))
    # Unless the served view is named (training on both views: the same examples with and without prompt cut).
    both = main(*parse_args(["--base-model-path", str(tiny_causal_backbone), "--data-dir", str(tiny_processed_data),
                             str(cut), "--output-dir", str(tmp_path / "both"), "--report-to", "none", "--max-steps",
                             "1", "--served-prompt-cut-from", str(cut)]))
    assert SCMModel.from_pretrained(both).config.max_prompt_tokens == 5


def test_category_head_trains_on_categorised_data(tiny_causal_backbone, tiny_categorised_data, tmp_path):
    out = _run(tiny_causal_backbone, tiny_categorised_data, tmp_path / "cat", "--max-steps", "4",
               "--category-head", "--category-weight", "0.3")
    model = SCMModel.from_pretrained(out)
    assert model.config.category_labels == ["hate", "illicit"] and model.config.category_weight == 0.3
    assert model.category_scorer.weight.shape[0] == 2
    state = json.loads(next((tmp_path / "cat").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert all("category_loss" in h for h in logged) and max(h["category_loss"] for h in logged) > 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["model"]["category_head"] is True


def test_category_head_without_categories_names_the_fix(tiny_causal_backbone, tiny_processed_data, tmp_path):
    with pytest.raises(ValueError, match=r"--category-head needs records with harm categories.*run-data.sh"):
        _run(tiny_causal_backbone, tiny_processed_data, tmp_path / "cat", "--max-steps", "1", "--category-head")


def test_categorised_data_trains_the_papers_model_without_the_flag(tiny_causal_backbone, tiny_categorised_data,
                                                                   tmp_path):
    out = _run(tiny_causal_backbone, tiny_categorised_data, tmp_path / "plain", "--max-steps", "1")
    assert SCMModel.from_pretrained(out).config.category_labels is None
