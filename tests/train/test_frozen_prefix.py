"""train/frozen_prefix.py: the cached frozen prefix gives the same losses and gradients as running every block."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

from model import SCMModel, SCMConfig
from tests.tiny_models import TINY_VOCAB
from train.frozen_prefix import INDEX_NAME, PREFIX_KEY, ROW_COLUMN, FrozenPrefixCache, PrefixCollator, check_exact
from train.training import PaddingCollator, freeze_lower_layers


def _tiny_scm(layers: int = 3, **config_overrides) -> SCMModel:
    torch.manual_seed(0)
    backbone_config = Qwen2Config(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                  **config_overrides)
    return SCMModel(SCMConfig(backbone_config=backbone_config))


def _features(n: int = 5) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        length = 6 + 3 * i
        ids = torch.randint(20, 500, (length,), generator=gen).tolist()
        labels = [-100, -100] + torch.randint(0, 2, (length - 3,), generator=gen).tolist() + [-100]
        out.append({"input_ids": ids, "token_labels": labels, "sequence_labels": i % 2, ROW_COLUMN: i})
    return out


def _cache(model, features, tmp_path, n_frozen=2) -> FrozenPrefixCache:
    cache = FrozenPrefixCache.build(model, n_frozen, [f["input_ids"] for f in features], tmp_path / "cache",
                                    batch_size=2, progress=False)
    cache.attach(model)
    return cache


def _loss_and_grads(model, batch):
    model.zero_grad()
    torch.manual_seed(7)  # the token scorer's dropout draws the same mask on both paths
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_cached_prefix_gives_the_same_loss_and_gradients(tmp_path):
    model = _tiny_scm()
    freeze_lower_layers(model, 2)
    features = _features()
    cache = _cache(model, features, tmp_path)
    collator = PrefixCollator(PaddingCollator(pad_token_id=0), cache)
    batch = collator(features)
    assert batch[PREFIX_KEY].shape == (5, 18, 32)
    plain = {k: v for k, v in batch.items() if k != PREFIX_KEY}
    model.train()
    cached_loss, cached_grads = _loss_and_grads(model, batch)
    plain_loss, plain_grads = _loss_and_grads(model, plain)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-6)
    assert set(cached_grads) == set(plain_grads) and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert check_exact(model, collator, features[:3]) < 1e-5


def test_the_frozen_blocks_are_skipped_only_for_cached_calls(tmp_path):
    model = _tiny_scm()
    features = _features(3)
    model.eval()
    plain = PaddingCollator(pad_token_id=0)(features)
    with torch.no_grad():
        before = model(**plain).token_logits
    cache = _cache(model, features, tmp_path)
    calls = []  # the frozen blocks' MLPs run only when a block really computes
    for block in model.backbone.layers[:2]:
        block.mlp.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(**PrefixCollator(PaddingCollator(pad_token_id=0), cache)(features))
        assert calls == []
        during = model(**plain).token_logits
        assert len(calls) == 2
    torch.testing.assert_close(during, before)
    cache.close()
    assert not (tmp_path / "cache").exists()
    with torch.no_grad():
        torch.testing.assert_close(model(**plain).token_logits, before)
    assert "forward" not in model.backbone.layers[0].__dict__


def test_cached_rows_are_the_hidden_states_entering_the_first_trained_block(tmp_path):
    model = _tiny_scm()
    features = _features(2)
    cache = FrozenPrefixCache.build(model, 1, [f["input_ids"] for f in features], tmp_path / "c", progress=False)
    ids = torch.tensor([features[1]["input_ids"]])
    with torch.no_grad():
        states = model.backbone(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache.rows([1], ids.shape[1])[0], states[1][0], atol=1e-5, rtol=1e-5)
    padded = cache.rows([0, 1], ids.shape[1])
    assert padded[0, len(features[0]["input_ids"]):].abs().sum() == 0  # right padding is zeros


def test_dropout_in_the_frozen_part_is_refused(tmp_path):
    model = _tiny_scm(attention_dropout=0.1)
    with pytest.raises(ValueError, match="attention_dropout=0.1"):
        FrozenPrefixCache.build(model, 1, [[1, 2, 3]], tmp_path / "c", progress=False)


@pytest.mark.parametrize("n_frozen", [0, 3])
def test_nothing_to_cache_or_nothing_to_train_is_refused(tmp_path, n_frozen):
    with pytest.raises(ValueError, match="needs 0 < --freeze-layers < 3"):
        FrozenPrefixCache.build(_tiny_scm(), n_frozen, [[1, 2, 3]], tmp_path / "c", progress=False)


def test_a_backbone_that_rescales_inputs_embeds_fails_the_exactness_check(tmp_path):
    model = _tiny_scm()
    features = _features(2)
    cache = _cache(model, features, tmp_path)

    def rescale(_module, args, kwargs):  # what a backbone scaling its embeddings by sqrt(hidden) would do
        if kwargs.get("inputs_embeds") is not None:
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"] * 4.0
        return args, kwargs

    model.backbone.register_forward_pre_hook(rescale, with_kwargs=True)
    with pytest.raises(RuntimeError, match="does not feed inputs_embeds unchanged"):
        check_exact(model, PrefixCollator(PaddingCollator(pad_token_id=0), cache), features)


def _kept(model, sequences, folder) -> FrozenPrefixCache:
    """A cache kept in ``folder`` for later runs (``--prefix-cache-dir``), two frozen blocks."""
    return FrozenPrefixCache.build(model, 2, sequences, folder, progress=False, keep=True)


def test_a_kept_cache_is_reused_only_while_weights_and_sequences_match(tmp_path):
    model = _tiny_scm()
    sequences = [f["input_ids"] for f in _features(3)]
    folder = tmp_path / "kept"
    first = _kept(model, sequences, folder)
    first_rows = first.rows([0, 1, 2], 12)
    assert not first.reused and first_rows.abs().sum() > 0
    first.close()
    assert (folder / "manifest.json").is_file()  # kept for later runs
    again = _kept(model, sequences, folder)
    assert again.reused == "exact" and again.build_seconds == 0.0
    torch.testing.assert_close(again.rows([0, 1, 2], 12), first_rows)
    new_sequence = _kept(model, [sequences[0], [21, 22, 23, 24]], folder)
    assert not new_sequence.reused  # one sequence it never saw: rebuilt for this run's two
    torch.testing.assert_close(new_sequence.rows([0], 12), first_rows[:1])
    before = new_sequence.rows([0], 9)
    with torch.no_grad():
        model.backbone.layers[1].mlp.up_proj.weight.add_(0.5)  # a frozen block changed: its outputs change
    other_weights = _kept(model, [sequences[0]], folder)
    assert not other_weights.reused
    assert (other_weights.rows([0], 9) - before).abs().max() > 1e-3


def test_a_subset_of_the_cached_sequences_in_another_order_reads_their_rows(tmp_path):
    """A leave-one-source-out fold trains on part of the data the cache was built on, without a new pass."""
    model = _tiny_scm()
    sequences = [f["input_ids"] for f in _features(5)]
    folder = tmp_path / "kept"
    whole = _kept(model, sequences, folder)
    expected = whole.rows([4, 1, 3], 20)
    whole.close()
    order = [sequences[4], sequences[1], sequences[3]]
    fold = _kept(model, order, folder)
    assert fold.reused == "subset" and len(fold) == 3 and fold.tokens == sum(len(sequences[i]) for i in (4, 1, 3))
    torch.testing.assert_close(fold.rows([0, 1, 2], 20), expected)
    fold.close()
    fresh = FrozenPrefixCache.build(model, 2, order, tmp_path / "fresh", progress=False)
    torch.testing.assert_close(fresh.rows([0, 1, 2], 20), expected)  # what the fold's own cache would hold
    assert _kept(model, sequences, folder).reused == "exact"


def test_a_cache_from_before_the_index_is_reused_exactly_and_indexed_for_subsets(tmp_path):
    model = _tiny_scm()
    sequences = [f["input_ids"] for f in _features(4)]
    folder = tmp_path / "kept"
    _kept(model, sequences, folder).close()
    (folder / INDEX_NAME).unlink()  # as written by the first cache format
    assert _kept(model, sequences[1:], folder).reused == ""
    _kept(model, sequences, folder).close()  # rebuilt with an index
    (folder / INDEX_NAME).unlink()
    assert _kept(model, sequences, folder).reused == "exact"
    assert (folder / INDEX_NAME).is_file()
    assert _kept(model, sequences[1:], folder).reused == "subset"
