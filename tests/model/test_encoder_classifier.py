"""EncoderForSequenceClassification: CLS pooling, loss, round trip, BERT and ModernBERT backbones."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertConfig, ModernBertConfig

from model import EncoderClassifierConfig, EncoderForSequenceClassification

CONFIGS = {
    "bert": BertConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4),
    "modernbert": ModernBertConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                   cls_token_id=1, sep_token_id=2),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_cls_pooling_loss_and_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(EncoderClassifierConfig(encoder_config=CONFIGS[kind])).eval()
    ids = torch.randint(3, 128, (2, 7))
    mask = torch.ones_like(ids)
    out = model(ids, attention_mask=mask, sequence_labels=torch.tensor([0, 1]))
    hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out.logits, model.classifier(hidden[:, 0]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])))
    assert model.classifier.bias is None
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, EncoderForSequenceClassification) and loaded.config.task == "encoder-full"
    assert torch.equal(loaded(ids, attention_mask=mask).logits, out.logits)


def test_training_steps_change_the_encoder():
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(EncoderClassifierConfig(encoder_config=CONFIGS["bert"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids, labels = torch.randint(3, 128, (4, 6)), torch.tensor([0, 1, 0, 1])
    losses = []
    for _ in range(6):
        loss = model(ids, sequence_labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]
    assert not torch.equal(before["classifier.weight"], model.classifier.weight)
    assert not torch.equal(before["encoder.embeddings.word_embeddings.weight"],
                           model.encoder.embeddings.word_embeddings.weight)
