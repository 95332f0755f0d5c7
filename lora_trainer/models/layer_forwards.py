"""Per-layer forwards installed on a model's modules as instance attributes, and taken away again.

Used where a run computes some frozen layers differently without changing the model (models/packed_convs,
models/half_norms): the wrapper sets `module.forward` on the instance, so the module's class, parameters and
state dict stay as they were, and `remove()` deletes that attribute again. A module that already has an
instance forward (someone else's) is never taken over, so removing ours cannot delete theirs.
"""
from __future__ import annotations

from typing import Callable, List

import torch
from torch import nn


class LayerForward:
    """One module whose calls go to this object's `forward` until `remove()`."""

    def __init__(self, module: nn.Module):
        self.module = module
        module.forward = self.forward  # instance attribute: the class's forward is untouched

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


class LayerForwards:
    """`make(module)` for each module of `model` that `select` accepts and whose forward is still its class's;
    `remove()` puts every layer back."""

    def __init__(self, model: nn.Module, make: Callable[[nn.Module], LayerForward],
                 select: Callable[[nn.Module], bool]):
        self.layers: List[LayerForward] = [make(m) for m in model.modules()
                                           if "forward" not in m.__dict__ and select(m)]

    def remove(self) -> None:
        for layer in self.layers:
            layer.remove()
        self.layers = []
