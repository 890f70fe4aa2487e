"""train/train_modernbert.py end to end on a tiny random BERT."""

from __future__ import annotations

import json

import torch

from model import EncoderForSequenceClassification
from train.train_modernbert import main, parse_args


def _val_loss(model, data_dir) -> float:
    from utils.data.processed_data import load_split
    from train.training import PaddingCollator

    batch = PaddingCollator(with_token_labels=False)(load_split(data_dir, "val"))
    with torch.no_grad():
        return model(**batch).loss.item()


def test_encoder_training_learns_and_reloads(tiny_encoder_backbone, tiny_encoder_data, tmp_path):
    out = main(*parse_args([
        "--base-model-path", str(tiny_encoder_backbone), "--data-dir", str(tiny_encoder_data),
        "--output-dir", str(tmp_path / "enc"), "--report-to", "none", "--max-steps", "10", "--logging-steps", "1",
        "--learning-rate", "3e-3", "--gradient-accumulation-steps", "1", "--lr-decay", "1.0",
    ]))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["model"]["task"] == "encoder-full"
    assert summary["arguments"]["training"]["num_train_epochs"] == 1.0  # the paper's default
    model = EncoderForSequenceClassification.from_pretrained(out).eval()
    initial = EncoderForSequenceClassification.from_encoder(str(tiny_encoder_backbone)).eval()
    assert _val_loss(model, tiny_encoder_data) < _val_loss(initial, tiny_encoder_data)
    assert model.config.task == "encoder-full"
    ids = torch.tensor([[101, 30, 40, 102]])
    again = EncoderForSequenceClassification.from_pretrained(out).eval()
    torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_truncation_keeps_the_final_separator(tiny_encoder_backbone, tiny_encoder_data, tmp_path):
    from utils.data.processed_data import load_split
    from train.training import truncate_records

    records, n = truncate_records(load_split(tiny_encoder_data, "train"), 6, keep_last_id=102)
    assert n > 0
    assert all(len(r["input_ids"]) <= 6 and r["input_ids"][-1] == 102 for r in records)
    assert all(r["token_labels"][-1] == -100 for r in records if len(r["input_ids"]) == 6)
