"""Validation loss on held-out images, and the overfitting warning.

The loss is computed at fixed timesteps with fixed noise per (image, timestep), so the same weights
always give the same number, and a change means the weights changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..data.cache import LatentCache
from ..data.dataset import Sample, TrainingSet
from ..utils.seeding import generator

DEFAULT_TIMESTEPS = (50, 200, 400, 600, 800, 950)


class Validator:
    """Deterministic loss of the current weights on a dataset."""

    def __init__(self, trainer, dataset: TrainingSet, timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0):
        self.trainer = trainer
        self.dataset = dataset
        self.timesteps = [min(int(t), trainer.bundle.num_train_timesteps - 1) for t in timesteps]
        self.seed = seed
        self.cache = LatentCache(dataset, "validation")
        self.cache.build(trainer.bundle.encode_images, device=trainer.device)

    @torch.no_grad()
    def loss(self) -> float:
        """Mean denoising loss over every image and timestep, through the trainer's own loss function.

        Not min-SNR weighted, whatever `min_snr_gamma` says: the weights balance the training gradient
        across timesteps; the plain MSE is what stays comparable between checkpoints and runs."""
        tr = self.trainer
        was_training = tr.network.training
        tr.network.train(False)
        total, count = 0.0, 0
        try:
            for i in range(len(self.dataset)):
                sample = Sample(i, False, self.dataset.fixed_caption(i))
                latents = self.cache.get([sample])
                with tr.autocast():
                    cond = tr.bundle.encode_captions([sample.caption])
                for t in self.timesteps:
                    noise = torch.randn(latents.shape, generator=generator(self.seed, "validation", i, t))
                    noise = noise.to(latents.device, latents.dtype)
                    ts = torch.tensor([t], device=latents.device)
                    loss = tr.denoising_loss(latents, noise, ts, cond, [self.dataset.image_info(i)], min_snr=False)
                    total += float(loss.sum())
                    count += 1
        finally:
            tr.network.train(was_training)
        return total / max(count, 1)


@dataclass
class OverfitDetector:
    """Warns when validation loss rises twice in a row while the training loss keeps falling."""

    history: List[Tuple[int, float, float]] = field(default_factory=list)  # (step, validation, training)
    warned_at: Optional[int] = None

    def update(self, step: int, validation: float, training: float) -> Optional[str]:
        self.history.append((step, validation, training))
        if self.warned_at is not None or len(self.history) < 3:
            return None
        (s0, v0, t0), (_, v1, t1), (_, v2, t2) = self.history[-3:]
        if v2 > v1 > v0 and t2 < t1 < t0:
            self.warned_at = s0
            return (f"overfitting from step {s0}: validation loss rose twice in a row ({v0:.4f} -> {v1:.4f} -> "
                    f"{v2:.4f}) while training loss kept falling; the checkpoint at step {s0} may be the one to use")
        return None

    def best(self) -> Optional[Tuple[int, float]]:
        if not self.history:
            return None
        step, value, _ = min(self.history, key=lambda h: h[1])
        return step, value


def split_validation(records: Sequence, fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices (train, validation): a deterministic `fraction` of the images held out (at least one)."""
    if fraction <= 0 or len(records) < 2:
        return list(range(len(records))), []
    order = sorted(range(len(records)), key=lambda i: (generator(seed, "split", records[i].sha256).initial_seed()))
    n_val = min(len(records) - 1, max(1, round(fraction * len(records))))
    held = set(order[:n_val])
    return [i for i in range(len(records)) if i not in held], sorted(held)


def as_metadata(value: Optional[float]) -> Dict[str, str]:
    return {} if value is None else {"ss_validation_loss": f"{value:.6f}"}
