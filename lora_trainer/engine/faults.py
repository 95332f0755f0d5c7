"""Fault injection for tests: simulate non-finite losses and out-of-memory errors at chosen steps.

The trainer calls these hooks at fixed points; the default injector does nothing.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch


class FaultInjector:
    """No faults. Subclass or use `ScriptedFaults` to inject some."""

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def before_forward(self, step: int, micro_batch_size: int) -> None:
        return None


class ScriptedFaults(FaultInjector):
    """NaN losses at `nan_steps`; a CUDA out-of-memory error whenever the micro-batch is at least `oom_at_batch`."""

    def __init__(self, nan_steps: Iterable[int] = (), oom_at_batch: Optional[int] = None):
        self.nan_steps = set(nan_steps)
        self.oom_at_batch = oom_at_batch
        self.ooms = 0

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step in self.nan_steps else loss

    def before_forward(self, step: int, micro_batch_size: int) -> None:
        if self.oom_at_batch is not None and micro_batch_size >= self.oom_at_batch:
            self.ooms += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
