"""LoRA adapters (peft) over the backbone's blocks for training, merged into plain weights before saving.

``--lora-rank R`` puts rank-R adapters on every linear layer of the blocks above ``--freeze-layers`` (all blocks by
default), freezes the backbone's own weights and trains the adapters and both heads. After training the adapters are
merged into the weights (``merge_and_unload``), so the saved checkpoint is an ordinary self-describing SCM checkpoint
(no adapter files, no peft needed to load it). Intermediate ``checkpoint-*`` folders hold peft adapter files, which is
what the Trainer needs to resume and to reload the best checkpoint.

Command::

    python -m train.train_qwen --task scm --lora-rank 16 --lora-alpha 32 ...
"""

from __future__ import annotations

from typing import Any

from torch import nn

from train.frozen_prefix import transformer_blocks

HEAD_MODULES = ("token_scorer", "holistic_scorer", "classifier")  # SCM heads; the encoder's classifier


def lora_target_modules(model: nn.Module, first_block: int = 0) -> list[str]:
    """Full names of the linear layers inside blocks ``first_block`` .. last (what the adapters wrap).

    Raises:
        ValueError: when ``first_block`` leaves no block.
    """
    blocks = transformer_blocks(model)
    if not 0 <= first_block < len(blocks):
        raise ValueError(f"--lora-rank with --freeze-layers {first_block} leaves no block of {len(blocks)} to adapt")
    wanted = {id(m) for block in list(blocks)[first_block:] for m in block.modules() if isinstance(m, nn.Linear)}
    return [name for name, module in model.named_modules() if id(module) in wanted]


def add_lora_adapters(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
                      first_block: int = 0) -> tuple[nn.Module, int]:
    """Wrap ``model`` in a peft ``PeftModel`` with LoRA adapters on blocks ``first_block``.. and trainable heads.

    Args:
        model: an ``SCMModel`` (or any model whose heads are named in ``HEAD_MODULES``).
        rank: adapter rank (> 0).
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / rank``); None means ``2 * rank``.
        dropout: dropout on the adapters' input.
        first_block: adapters go on this block and the ones above it.

    Returns:
        ``(peft_model, trainable_parameters)``.

    Raises:
        ValueError: bad rank or block range.
    """
    from peft import LoraConfig, get_peft_model

    if rank <= 0:
        raise ValueError(f"--lora-rank must be positive, got {rank}")
    heads = [name for name in HEAD_MODULES if hasattr(model, name)]
    config = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, lora_dropout=dropout, bias="none",
                        target_modules=lora_target_modules(model, first_block), modules_to_save=heads)
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return peft_model, trainable


def is_lora_model(model: Any) -> bool:
    """Whether ``model`` is a peft-wrapped model."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a pinned requirement
        return False
    return isinstance(model, PeftModel)


def merge_lora_adapters(model: nn.Module) -> nn.Module:
    """Merge the adapters into the weights and return the plain model (trained heads in place); a plain model is
    returned unchanged."""
    if not is_lora_model(model):
        return model
    merged = model.merge_and_unload()
    # The trained copies of the heads replace the originals, so merged is an ordinary model with plain modules.
    return merged
