"""What ``--cache-frozen-prefix`` and ``--lora-rank`` change in the shared training flow, behind three calls.

``train/training.py`` ``run_training`` calls, in this order::

    speedups = TrainingSpeedups(args, train_args, logger)
    train_ds, eval_ds, collator = speedups.prepare_data(model, train_records, eval_records, train_ds, eval_ds, collator)
    model, trainable = speedups.prepare_model(model, trainable)
    ...  # Trainer: train, evaluate
    speedups.finish(trainer)   # merge LoRA into plain weights, drop the cache; then the Trainer saves as usual

With neither flag every call returns its input unchanged. The cache is built before the adapters are added because it
only reads the frozen lower blocks, which carry no adapters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from train.frozen_prefix import ROW_COLUMN, FrozenPrefixCache, PrefixCollator, check_exact
from train.lora import add_lora_adapters, merge_lora_adapters

CACHE_FOLDER = ".frozen-prefix-cache"


class TrainingSpeedups:
    """Frozen-prefix cache and LoRA adapters for one training run.

    Attributes:
        cache: the built cache, or None.
        facts: what was done (recorded in ``training_summary.json``).
    """

    def __init__(self, args: Any, train_args: Any, logger: Any) -> None:
        self.args = args
        self.train_args = train_args
        self.logger = logger
        self.cache: FrozenPrefixCache | None = None
        self.facts: dict[str, Any] = {"cache_frozen_prefix": bool(args.cache_frozen_prefix),
                                      "lora_rank": int(args.lora_rank)}

    def _autocast_dtype(self) -> torch.dtype | None:
        if getattr(self.train_args, "bf16", False):
            return torch.bfloat16
        if getattr(self.train_args, "fp16", False):
            return torch.float16
        return None

    def prepare_data(self, model: torch.nn.Module, train_records: list[dict[str, Any]],
                     eval_records: list[dict[str, Any]], train_ds: Any, eval_ds: Any, collator: Any
                     ) -> tuple[Any, Any, Any]:
        """Build the frozen-prefix cache over training + validation examples and route batches through it.

        Returns:
            ``(train_dataset, eval_dataset, collator)``, unchanged without ``--cache-frozen-prefix``.

        Raises:
            ValueError: the cache cannot be exact for this setting. RuntimeError: cached != uncached on a batch.
        """
        if not self.args.cache_frozen_prefix:
            return train_ds, eval_ds, collator
        device = self.train_args.device
        model.to(device)
        sequences = [r["input_ids"] for r in train_records] + [r["input_ids"] for r in eval_records]
        keep = self.args.prefix_cache_dir is not None
        folder = Path(self.args.prefix_cache_dir) if keep else Path(self.train_args.output_dir) / CACHE_FOLDER
        self.cache = FrozenPrefixCache.build(
            model, self.args.freeze_layers, sequences, folder,
            batch_size=self.train_args.per_device_eval_batch_size, device=device,
            autocast_dtype=self._autocast_dtype(), progress=not self.train_args.disable_tqdm, keep=keep)
        self.cache.attach(model)
        collator = PrefixCollator(collator, self.cache)
        train_ds = train_ds.add_column(ROW_COLUMN, list(range(len(train_records))))
        eval_ds = eval_ds.add_column(ROW_COLUMN, list(range(len(train_records), len(sequences))))
        diff = check_exact(model, collator, [train_ds[i] for i in range(min(4, len(train_ds)))], device,
                           self._autocast_dtype())
        self.facts.update(cache_build_seconds=round(self.cache.build_seconds, 1),
                          cache_reused=self.cache.reused or False, cache_tokens=self.cache.tokens,
                          cache_check_max_abs_diff=diff)
        how = (f"reused ({self.cache.reused}) from {folder}" if self.cache.reused
               else f"built in {self.cache.build_seconds:.0f} s")
        self.logger.info("frozen-prefix cache: %d sequences, %d tokens through %d frozen blocks, %s "
                         "(cached vs uncached logits differ by %.1e)", len(sequences), self.cache.tokens,
                         self.args.freeze_layers, how, diff)
        return train_ds, eval_ds, collator

    def prepare_model(self, model: torch.nn.Module, trainable: int) -> tuple[torch.nn.Module, int]:
        """Add LoRA adapters (``--lora-rank`` > 0) on the blocks above ``--freeze-layers``.

        Returns:
            ``(model, trainable_parameters)``, unchanged without ``--lora-rank``.
        """
        if self.args.lora_rank <= 0:
            return model, trainable
        model, trainable = add_lora_adapters(model, self.args.lora_rank, self.args.lora_alpha, self.args.lora_dropout,
                                             first_block=self.args.freeze_layers)
        self.facts.update(lora_alpha=model.peft_config["default"].lora_alpha,
                          lora_dropout=self.args.lora_dropout, lora_first_block=self.args.freeze_layers)
        self.logger.info("LoRA rank %d on blocks %d.. : %d trainable parameters", self.args.lora_rank,
                         self.args.freeze_layers, trainable)
        return model, trainable

    def finish(self, trainer: Any) -> None:
        """Merge LoRA adapters into plain weights (``trainer.model`` becomes the plain model) and drop the cache."""
        trainer.model = merge_lora_adapters(trainer.model)
        if self.cache is not None:
            self.cache.close()
            self.cache = None
