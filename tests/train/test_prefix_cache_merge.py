"""train/prefix_cache_merge.py: the union of two kept caches serves a run over both caches' sequences, exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.train.test_frozen_prefix import _kept, _tiny_scm
from train.frozen_prefix import FrozenPrefixCache
from train.prefix_cache_merge import main, merge_caches


def _sequences(seed: int, n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(20, 500, (5 + 2 * i,), generator=gen).tolist() for i in range(n)]


def test_a_merged_cache_serves_both_views_with_the_rows_each_cache_computed(tmp_path):
    model = _tiny_scm()
    with_prompt, response_only = _sequences(1, 3), _sequences(2, 2)
    shared = with_prompt[0]  # a sequence in both caches (identical refusals without their prompts) is kept once
    first = _kept(model, with_prompt, tmp_path / "a")
    second = _kept(model, [*response_only, shared], tmp_path / "b")
    manifest = merge_caches([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert manifest["sequences"] == 5 and manifest["tokens"] == sum(len(s) for s in with_prompt + response_only)
    assert not (tmp_path / "merged.partial").exists()
    mixed = [response_only[1], with_prompt[2], response_only[0], with_prompt[0]]
    served = FrozenPrefixCache.build(model, 2, mixed, tmp_path / "merged", progress=False, keep=True)
    assert served.reused == "subset" and served.build_seconds == 0.0
    expected = [second.rows([1], 9), first.rows([2], 9), second.rows([0], 9), first.rows([0], 9)]
    assert torch.equal(served.rows([0, 1, 2, 3], 9), torch.cat(expected))
    # The merged cache's manifest says where it came from and never passes for one run's exact fingerprint.
    kept = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert [m["sequences"] for m in kept["merged_from"]] == [3, 3] and kept["sequences_sha256"].startswith("merged:")


def test_caches_of_other_frozen_weights_or_incomplete_folders_are_refused(tmp_path):
    _kept(_tiny_scm(), _sequences(1, 2), tmp_path / "a")
    other = _tiny_scm()
    with torch.no_grad():
        other.backbone.layers[0].mlp.up_proj.weight.add_(1.0)
    _kept(other, _sequences(2, 2), tmp_path / "b")
    with pytest.raises(ValueError, match="built differently \\(frozen_weights_sha256\\)"):
        merge_caches([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match="half is not a complete kept frozen-prefix cache"):
        merge_caches([tmp_path / "a", tmp_path / "half"], tmp_path / "merged")
    with pytest.raises(ValueError, match="at least two"):
        merge_caches([tmp_path / "a"], tmp_path / "merged")
    with pytest.raises(SystemExit, match="is one of the --caches"):
        main(["--caches", str(tmp_path / "a"), str(tmp_path / "b"), "--output-dir", str(tmp_path / "a")])
    assert not (tmp_path / "merged").exists()
    np.testing.assert_equal(np.load(tmp_path / "a" / "states.npy").shape[1], 32)
