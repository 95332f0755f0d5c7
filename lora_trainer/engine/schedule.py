"""Where a run is (optimizer steps, epoch, samples seen, losses), how long its schedule is, and the advice the
loop gives when it has to stop."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List

from ..config import TrainConfig
from ..data.dataset import TrainingSet


@dataclass
class Progress:
    """Where the run is: optimizer steps done and the position in the data order."""

    step: int = 0
    epoch: int = 0
    samples_seen: int = 0
    losses: List[float] = field(default_factory=list)
    nonfinite_steps: int = 0  # steps skipped because the loss or the gradients were not finite
    consecutive_nonfinite: int = 0


NONFINITE_ADVICE = ("usual fixes: mixed_precision: bf16 instead of fp16 (or no), a lower learning_rate, "
                    "max_grad_norm: 1.0, and a VAE that does not overflow in fp16")
OOM_ADVICE = ("lower resolution, batch_size or lora_rank, turn on cache_latents, or train on a GPU with more "
              "memory (python -m lora_trainer plan --config ... shows what fits)")


def schedule_length(config: TrainConfig, dataset: TrainingSet, world_size: int = 1) -> Dict[str, int]:
    """steps_per_epoch, total_steps and epochs for a config on a dataset (batches of batch_size * world_size)."""
    batches = dataset.batches_per_epoch(config.batch_size * world_size)
    steps_per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
    total = config.max_steps or config.epochs * steps_per_epoch
    return {"batches_per_epoch": batches, "steps_per_epoch": steps_per_epoch, "total_steps": total,
            "epochs": math.ceil(total / steps_per_epoch)}
