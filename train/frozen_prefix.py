"""Frozen-prefix feature cache: run the frozen lower blocks once, so each epoch runs only the trained blocks.

With ``--freeze-layers N`` the embeddings and the first N transformer blocks never change, so the hidden states that
enter block N are the same at every epoch. ``--cache-frozen-prefix`` computes them once for every training and
validation example (in evaluation mode, before training) and stores them in a memory-mapped file; during training the
batches carry those states and the model runs only blocks N.. and the heads. The result is exact: it equals training
without the cache (the test suite checks losses and gradients), because nothing below block N is trained and the
frozen blocks hold no dropout (both are checked here, and a mismatch on the first batch refuses to train).

How it plugs in without changing the model: the collator adds ``prefix_hidden_states`` (the cached states, padded) to
each batch; ``SCMModel.forward`` passes unknown keyword arguments to its backbone, where a forward pre-hook moves them
to ``inputs_embeds`` and tells the frozen blocks to pass their input through. A call without
``prefix_hidden_states`` (anything else that uses the model while the cache is attached) runs every block as usual.
The requirement on the backbone is the HF decoder layout: ``forward(input_ids | inputs_embeds)`` feeds
``inputs_embeds`` unchanged into the first block, and the blocks take the hidden states as their first argument
(Llama, Qwen2, Mistral, ...). A backbone that rescales ``inputs_embeds`` (Gemma) fails the exactness check with a
message, never silently.

A cache is kept and reused across runs with ``--prefix-cache-dir DIR`` (ablations over learning rates, epochs or the
upper blocks share one frozen prefix): ``DIR/manifest.json`` holds fingerprints of the frozen weights (SHA-256 of
the embeddings and frozen blocks), of the token sequences and of the precision, and ``DIR/index.npz`` the SHA-256
of each sequence with where its rows lie. A run reuses the cache when the weights and precision match and every one
of its sequences is in the cache, in any order: the same data, or a subset of it (a leave-one-source-out fold of the
data the cache was built on trains on its cached rows without a new pass over the frozen blocks). Otherwise the cache
is rebuilt for the run's sequences. A cache written before the index existed is reused on exactly its sequences and
gets its index then. Without the flag the cache lives in the output folder and is deleted after training.

Command (any training script)::

    python -m train.train_qwen --task scm --freeze-layers 24 --cache-frozen-prefix [--prefix-cache-dir DIR] ...
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from utils.io_utils import read_json, write_json

PREFIX_KEY = "prefix_hidden_states"
CACHE_FORMAT = 1
ROW_COLUMN = "prefix_row"
INDEX_NAME = "index.npz"
FRAME_KEYS = ("format", "n_frozen", "frozen_weights_sha256", "autocast")  # what any reuse needs to match


class _StopForward(Exception):
    """Raised by the capture hook once the frozen blocks have run (the upper blocks are not needed then)."""


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks: the first ``ModuleList`` with more than one module.

    Raises:
        ValueError: when the model holds no such list.
    """
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            return module
    raise ValueError("cannot find the backbone's layer list (a ModuleList of transformer blocks)")


def backbone_of(model: nn.Module) -> nn.Module:
    """The module whose forward takes ``input_ids`` / ``inputs_embeds`` and runs the blocks (``model.backbone``)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no .backbone: the frozen-prefix cache supports SCMModel")
    return backbone


def check_no_dropout(model: nn.Module, n_frozen: int) -> None:
    """Refuse a cache that would not be exact: dropout in the embeddings or the frozen blocks is random per step.

    Raises:
        ValueError: naming the dropout found.
    """
    backbone = backbone_of(model)
    frozen = [backbone.get_input_embeddings(), *list(transformer_blocks(model))[:n_frozen]]
    for part in frozen:
        for name, module in part.named_modules():
            if isinstance(module, nn.Dropout) and module.p > 0:
                raise ValueError(f"--cache-frozen-prefix: the frozen part holds dropout ({name}, p={module.p}), so its "
                                 f"outputs change at every step; train without the cache")
    config = backbone.config
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and value > 0 \
                and "classifier" not in key:
            raise ValueError(f"--cache-frozen-prefix: the backbone config sets {key}={value}, so the frozen blocks "
                             f"are random in training; train without the cache (or set it to 0)")


def fingerprint(model: nn.Module, n_frozen: int, sequences: Sequence[Sequence[int]],
                autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """What a cache depends on: the frozen weights, the sequences, the precision (SHA-256 digests and counts)."""
    weights = hashlib.sha256()
    frozen = [backbone_of(model).get_input_embeddings(), *list(transformer_blocks(model))[:n_frozen]]
    for part in frozen:
        for name, tensor in sorted(part.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    tokens = hashlib.sha256()
    for sequence in sequences:
        tokens.update(np.asarray(sequence, dtype=np.int64).tobytes())
        tokens.update(b"|")
    return {"format": CACHE_FORMAT, "n_frozen": n_frozen, "frozen_weights_sha256": weights.hexdigest(),
            "sequences": len(sequences), "tokens": int(sum(len(s) for s in sequences)),
            "sequences_sha256": tokens.hexdigest(), "autocast": str(autocast_dtype)}


def sequence_digests(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """SHA-256 of each token sequence (``bytes`` of 32), the key of a cache's index."""
    return np.array([hashlib.sha256(np.asarray(s, dtype=np.int64).tobytes()).digest() for s in sequences],
                    dtype="S32")


def write_index(folder: Path, digests: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Where each cached sequence's rows lie in ``states.npy`` (written before the manifest that validates it)."""
    np.savez(folder / INDEX_NAME, digests=digests, starts=starts, lengths=lengths)


def locate(folder: Path, digests: np.ndarray) -> np.ndarray | None:
    """Start row of each sequence (by digest) in the cache of ``folder``, or None when one is not in its index."""
    if not (folder / INDEX_NAME).is_file():
        return None
    with np.load(folder / INDEX_NAME) as index:
        where = {digest: int(start) for digest, start in zip(index["digests"], index["starts"])}
    starts = [where.get(digest) for digest in digests]
    return None if any(start is None for start in starts) else np.array(starts, dtype=np.int64)


@dataclass
class FrozenPrefixCache:
    """Hidden states entering block ``n_frozen`` for a list of token sequences, in one memory-mapped fp32 file.

    Attributes:
        n_frozen: number of frozen blocks (the states are those entering block ``n_frozen``).
        hidden_size: width of the states.
        starts: start row of each sequence in ``states``.
        lengths: number of rows (tokens) of each sequence.
        states: ``(cached_tokens, hidden_size)`` array (``numpy.memmap``); it may hold more sequences than the run's.
        folder: where the file lives (removed by :meth:`close` unless ``keep``).
        build_seconds: time spent computing the states (0 when an existing cache was reused).
        reused: whether the states came from an earlier run's matching cache ("exact" or "subset"), or "".
        keep: leave the folder in place on :meth:`close` (a ``--prefix-cache-dir`` for later runs).
    """

    n_frozen: int
    hidden_size: int
    starts: np.ndarray
    lengths: np.ndarray
    states: np.ndarray
    folder: Path
    build_seconds: float = 0.0
    reused: str = ""
    keep: bool = False
    _hooks: list[Any] = field(default_factory=list, repr=False)
    _patched: list[nn.Module] = field(default_factory=list, repr=False)
    _active: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def tokens(self) -> int:
        """Tokens of the run's sequences (rows it reads)."""
        return int(self.lengths.sum())

    @classmethod
    def build(
        cls,
        model: nn.Module,
        n_frozen: int,
        sequences: Sequence[Sequence[int]],
        folder: str | Path,
        *,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
        progress: bool = True,
        keep: bool = False,
    ) -> "FrozenPrefixCache":
        """Run the embeddings and the first ``n_frozen`` blocks once over ``sequences`` and store what enters the next.

        With ``keep``, a cache already in ``folder`` built with the same frozen weights and precision that holds
        every one of ``sequences`` (the same list, a subset, in any order) is reused instead, and the folder outlives
        :meth:`close`.

        Args:
            model: an ``SCMModel`` (any model with ``.backbone`` in the HF decoder layout).
            n_frozen: number of frozen lower blocks, 1 .. number of blocks - 1.
            sequences: token ids, one list per example, in the order rows will be asked for.
            folder: folder for the memory-mapped file (and its manifest).
            batch_size: sequences per forward (length-sorted, right-padded).
            device: where to run the frozen blocks.
            autocast_dtype: bf16/fp16 to compute as mixed-precision training would, or None (fp32).
            progress: show a progress bar.
            keep: reuse a matching cache in ``folder`` and keep the folder after training.

        Returns:
            The cache (not yet attached to the model: see :meth:`attach`).

        Raises:
            ValueError: ``n_frozen`` out of range, dropout in the frozen part, or empty ``sequences``.
        """
        from tqdm.auto import tqdm

        blocks = transformer_blocks(model)
        if not 0 < n_frozen < len(blocks):
            raise ValueError(f"--cache-frozen-prefix needs 0 < --freeze-layers < {len(blocks)} (the backbone's "
                             f"blocks), got {n_frozen}: with nothing frozen there is nothing to cache")
        if not sequences:
            raise ValueError("--cache-frozen-prefix: no sequences to cache")
        check_no_dropout(model, n_frozen)
        backbone = backbone_of(model)
        hidden = backbone.config.hidden_size
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        folder = Path(folder)
        manifest = fingerprint(model, n_frozen, sequences, autocast_dtype) if keep else None
        if keep:
            found = cls._reusable(folder, manifest, sequences, offsets[:-1], lengths)
            if found is not None:
                starts, how = found
                states = np.load(folder / "states.npy", mmap_mode="r")
                return cls(n_frozen=n_frozen, hidden_size=hidden, starts=starts, lengths=lengths, states=states,
                           folder=folder, reused=how, keep=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)  # a half-built cache must never look valid
        (folder / INDEX_NAME).unlink(missing_ok=True)
        states = np.lib.format.open_memmap(folder / "states.npy", mode="w+", dtype=np.float32,
                                           shape=(int(offsets[-1]), hidden))
        captured: dict[str, torch.Tensor] = {}

        def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _StopForward

        started = time.time()
        was_training = model.training
        model.eval()
        handle = blocks[n_frozen].register_forward_pre_hook(capture, with_kwargs=True)
        order = np.argsort(-lengths, kind="stable")
        try:
            with torch.inference_mode(), _autocast(device, autocast_dtype):
                for start in tqdm(range(0, len(order), batch_size), desc="frozen-prefix cache", disable=not progress,
                                  unit="batch"):
                    rows = order[start:start + batch_size]
                    longest = int(lengths[rows].max())
                    ids = torch.zeros((len(rows), longest), dtype=torch.long)
                    mask = torch.zeros((len(rows), longest), dtype=torch.long)
                    for i, row in enumerate(rows):
                        ids[i, :lengths[row]] = torch.tensor(sequences[row], dtype=torch.long)
                        mask[i, :lengths[row]] = 1
                    with contextlib.suppress(_StopForward):
                        backbone(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                    out = captured.pop("h").float().cpu().numpy()
                    for i, row in enumerate(rows):
                        states[offsets[row]:offsets[row + 1]] = out[i, :lengths[row]]
        finally:
            handle.remove()
            model.train(was_training)
        states.flush()
        if manifest is not None:
            write_index(folder, sequence_digests(sequences), offsets[:-1], lengths)
            write_json(folder / "manifest.json", manifest)
        return cls(n_frozen=n_frozen, hidden_size=hidden, starts=offsets[:-1], lengths=lengths, states=states,
                   folder=folder, build_seconds=time.time() - started, keep=keep)

    @staticmethod
    def _reusable(folder: Path, manifest: dict[str, Any], sequences: Sequence[Sequence[int]], starts: np.ndarray,
                  lengths: np.ndarray) -> tuple[np.ndarray, str] | None:
        """``(start rows, "exact" | "subset")`` when the kept cache in ``folder`` serves ``sequences``, else None."""
        if not (folder / "manifest.json").is_file():
            return None
        kept = read_json(folder / "manifest.json")
        if any(kept.get(key) != manifest[key] for key in FRAME_KEYS):
            return None
        if kept == manifest:
            if not (folder / INDEX_NAME).is_file():  # a cache from before the index: give it one for later subsets
                write_index(folder, sequence_digests(sequences), starts, lengths)
            return starts, "exact"
        found = locate(folder, sequence_digests(sequences))
        return None if found is None else (found, "subset")

    def rows(self, indices: Sequence[int], length: int) -> torch.Tensor:
        """Cached states of sequences ``indices``, right-padded with zeros to ``length``: ``(len, length, hidden)``."""
        out = torch.zeros((len(indices), length, self.hidden_size), dtype=torch.float32)
        for i, index in enumerate(indices):
            start = int(self.starts[index])
            n = min(int(self.lengths[index]), length)
            out[i, :n] = torch.from_numpy(np.array(self.states[start:start + n]))  # a copy: the map may be read-only
        return out

    def attach(self, model: nn.Module) -> None:
        """Make ``model`` accept ``prefix_hidden_states`` (skip the frozen blocks for those calls only)."""
        if self._hooks:
            return
        backbone = backbone_of(model)

        def take_prefix(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            prefix = kwargs.pop(PREFIX_KEY, None)
            self._active = prefix is not None
            if self._active:
                kwargs["inputs_embeds"] = prefix
                kwargs["input_ids"] = None
            return args, kwargs

        def release(*_: Any) -> None:
            self._active = False

        self._hooks.append(backbone.register_forward_pre_hook(take_prefix, with_kwargs=True))
        self._hooks.append(backbone.register_forward_hook(release, always_call=True))
        for block in list(transformer_blocks(model))[:self.n_frozen]:
            block.forward = self._skipping(block.forward)
            self._patched.append(block)

    def _skipping(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def forward_or_pass(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return hidden_states if self._active else forward(hidden_states, *args, **kwargs)

        return forward_or_pass

    def detach(self) -> None:
        """Undo :meth:`attach`: the model runs every block again for every call."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for block in self._patched:
            del block.forward  # the instance attribute; the class's forward is back
        self._patched.clear()
        self._active = False

    def close(self) -> None:
        """Detach, and delete the memory-mapped file unless the cache is kept for later runs."""
        self.detach()
        self.states = np.empty((0, self.hidden_size), dtype=np.float32)
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class PrefixCollator:
    """Wraps a collator: adds the cached states of each example (column ``prefix_row``) as ``prefix_hidden_states``."""

    base: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]
    cache: FrozenPrefixCache

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.base(features)
        batch[PREFIX_KEY] = self.cache.rows([int(f[ROW_COLUMN]) for f in features], batch["input_ids"].shape[1])
        return batch


def check_exact(model: nn.Module, collator: PrefixCollator, features: Sequence[dict[str, Any]],
                device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None) -> float:
    """Compare cached and uncached logits on one batch (evaluation mode); the cache must be attached.

    Returns:
        The largest absolute difference.

    Raises:
        RuntimeError: when they differ beyond rounding (the backbone does not feed ``inputs_embeds`` straight into
            its first block, e.g. it rescales them).
    """
    batch = {k: v.to(device) for k, v in collator(features).items()}
    plain = {k: v for k, v in batch.items() if k != PREFIX_KEY}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device, autocast_dtype):
            cached, uncached = model(**batch), model(**plain)
    finally:
        model.train(was_training)
    # Padded positions differ (zeros in the cache, computed states without it) and are never used: compare the rest.
    real = batch["attention_mask"].bool()
    diff = max(float((cached.token_logits - uncached.token_logits).float()[real].abs().max()),
               float((cached.sequence_logits - uncached.sequence_logits).float().abs().max()))
    tolerance = 1e-3 if autocast_dtype is None else 5e-2
    if not math.isfinite(diff) or diff > tolerance:
        raise RuntimeError(f"--cache-frozen-prefix: cached and uncached logits differ by {diff:.2e} on the first "
                           f"batch: this backbone ({type(backbone_of(model)).__name__}) does not feed inputs_embeds "
                           f"unchanged into its first block; train without the cache")
    return diff


def _autocast(device: torch.device | str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
