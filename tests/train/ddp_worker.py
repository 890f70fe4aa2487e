"""One rank of the distributed-training test (tests/train/test_train_qwen_distributed.py), started by torchrun.

Runs ``train.train_qwen`` unchanged and records what this rank saw: the training examples of its batches, the world
size and parallel mode the Trainer used, and a digest of its weights before and after training.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.train.ddp_worker RECORD_DIR \\
        --base-model-path ... --data-dir ... --output-dir ...
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from train.train_qwen import main, parse_args
from train.training import MonitorTrainer


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run(record_dir: Path, argv: list[str]) -> None:
    """Train with ``argv`` and write ``record_dir/rank<N>.json``."""
    record: dict = {"seen": [], "rank": int(os.environ["RANK"])}
    trainers: list[MonitorTrainer] = []
    original_init, original_step = MonitorTrainer.__init__, MonitorTrainer.training_step

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        record["initial_weights"] = weights_digest(self.model)
        trainers.append(self)

    def training_step(self, model, inputs, *args, **kwargs):
        for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()):
            record["seen"].append(ids[:sum(mask)])
        return original_step(self, model, inputs, *args, **kwargs)

    MonitorTrainer.__init__, MonitorTrainer.training_step = init, training_step
    main(*parse_args(argv))
    trainer = trainers[-1]
    record.update(world_size=trainer.args.world_size, parallel_mode=trainer.args.parallel_mode.value,
                  global_step=trainer.state.global_step, weights=weights_digest(trainer.model))
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2:])
