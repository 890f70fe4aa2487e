"""train/training.py: precision resolution (the Trainer really autocasts what --precision says) and the two optimisers
(the Trainer's grouped decay by default, the paper code's AdamW decaying every parameter under --paper-precision)."""

from __future__ import annotations

import pytest
import torch

from model import SCMConfig, SCMModel
from train.train_qwen import QwenTrainingArguments
from train.training import MonitorTrainer

from tests.tiny_models import tiny_qwen2_config


def _args(tmp_path, **kwargs) -> QwenTrainingArguments:
    return QwenTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, eval_strategy="no",
                                 save_strategy="no", load_best_model_at_end=False, **kwargs)


def _tiny_model(dtype: torch.dtype = torch.float32) -> SCMModel:
    torch.manual_seed(0)
    return SCMModel(SCMConfig(backbone_config=tiny_qwen2_config().to_dict())).to(dtype)


def test_precision_decides_the_trainers_autocast(tmp_path, monkeypatch):
    # Regression: bf16 used to be set after TrainingArguments.__post_init__, which had already derived the
    # Trainer's mixed precision ("no"), so "bf16 on CUDA" trained in plain fp32.
    assert (_args(tmp_path).precision, _args(tmp_path).mixed_precision) == ("fp32", "no")  # auto on a CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU machine would answer
    args = _args(tmp_path, precision="bf16")
    assert (args.bf16, args.fp16, args.mixed_precision) == (True, False, "bf16")
    trainer = MonitorTrainer(model=_tiny_model(), args=args)
    assert trainer.accelerator.mixed_precision == "bf16"


def test_paper_precision_turns_autocast_off(tmp_path):
    args = _args(tmp_path, paper_precision=True)
    assert (args.precision, args.bf16, args.fp16, args.mixed_precision) == ("paper", False, False, "no")


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "bf16"}, "needs a CUDA GPU"),
    ({"precision": "fp64"}, "auto, bf16, fp16 or fp32"),
    ({"precision": "fp32", "paper_precision": True}, "drop --precision fp32"),
    ({"precision": "fp32", "bf16": True}, "contradicts --precision"),
])
def test_bad_precision_flags_name_the_fix(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kwargs)


def test_default_optimizer_spares_biases_and_norms(tmp_path):
    model = _tiny_model()
    optimizer = MonitorTrainer(model=model, args=_args(tmp_path)).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert "backbone.norm.weight" in undecayed and "token_scorer.1.bias" in undecayed
    assert "holistic_scorer.weight" not in undecayed


def test_paper_optimizer_decays_every_parameter_of_bf16_weights(tmp_path):
    model = _tiny_model(torch.bfloat16)
    args = _args(tmp_path, paper_precision=True, learning_rate=0.5, weight_decay=0.5)
    optimizer = MonitorTrainer(model=model, args=args, paper_optimizer=True).create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    assert group["weight_decay"] == 0.5
    # With zero gradients Adam's update is 0, so a step leaves exactly the decay: p * (1 - lr * wd), in bf16.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16, name
        assert torch.equal(p.detach(), before[name] * (1 - 0.5 * 0.5)), name


def test_no_pinned_memory_without_an_accelerator(tmp_path):
    # Pinning without one only made torch warn at every epoch's DataLoader (the CPU scripts do not pass --use-cpu,
    # which turns it off too); on a CUDA machine the Trainer's default (pinned) stands.
    args = QwenTrainingArguments(output_dir=str(tmp_path), report_to="none", eval_strategy="no", save_strategy="no",
                                 load_best_model_at_end=False)
    assert args.dataloader_pin_memory is torch.cuda.is_available()
