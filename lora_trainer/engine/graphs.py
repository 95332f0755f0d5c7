"""CUDA graphs for the training step: the forward and backward of the denoising loss replayed as two graphs.

At batch 1-8 on a fast GPU the step is bound by the CPU launching thousands of small kernels (the UNet,
plus five more per LoRA layer), not by arithmetic. A CUDA graph records those launches once per batch
shape and replays them with one call. The optimizer, gradient clipping and everything that reads the
host stay eager, so schedules, skip-on-non-finite and the per-step randomness are unchanged.

Rules that keep replays equal to eager steps (see torch.cuda.make_graphed_callables):
- one graphed forward/backward per optimizer step (the gradient buffers are the graph's own: a second
  backward in the same step would overwrite the first instead of adding to it), so the trainer asks
  for a graph only when the step is a single micro-batch;
- inputs are device tensors (cached latents and text embeddings, noise copied without a host sync);
- autocast inside the graph runs without its weight-cast cache.
A shape that cannot be captured (an unusual model, out of memory) runs eagerly from then on.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..models.bundle import Conditioning
from ..utils.device import is_out_of_memory

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
ShapeKey = Tuple


class _LossModule(nn.Module):
    """The per-sample loss as a module of tensors only, owning the trainable parameters it depends on."""

    def __init__(self, loss_fn: LossFn, params: Sequence[nn.Parameter], cond_names: Sequence[str]):
        super().__init__()
        self.loss_fn = loss_fn
        self.trainable = nn.ParameterList(params)  # the same Parameter objects, not copies
        self.cond_names = list(cond_names)

    def forward(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                *cond_values: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(latents, noise, timesteps, dict(zip(self.cond_names, cond_values)))


class GraphedLoss:
    """Per-sample losses through captured CUDA graphs, one pair (forward, backward) per input shape.

    `__call__` returns None when this shape runs eagerly (over `max_graphs`, or capture failed)."""

    def __init__(self, loss_fn: LossFn, params: Sequence[nn.Parameter], max_graphs: int,
                 say: Callable[[str, int], None]):
        self.loss_fn = loss_fn
        self.params = list(params)
        self.max_graphs = max_graphs
        self.say = say
        self.graphed: Dict[ShapeKey, Callable] = {}
        self.eager: set = set()
        self.replays = 0

    @staticmethod
    def key(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> ShapeKey:
        tensors = [latents, noise, timesteps] + [cond[k] for k in sorted(cond)]
        return tuple((tuple(t.shape), t.dtype) for t in tensors) + tuple(sorted(cond))

    def __call__(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                 cond: Conditioning) -> Optional[torch.Tensor]:
        key = self.key(latents, noise, timesteps, cond)
        names = sorted(cond)
        args = (latents, noise, timesteps, *[cond[k] for k in names])
        if key not in self.graphed:
            if key in self.eager or len(self.graphed) >= self.max_graphs:
                self.eager.add(key)
                return None
            graphed = self._capture(key, names, args)
            if graphed is None:
                return None
            self.graphed[key] = graphed
        self.replays += 1
        return self.graphed[key](*args)

    def _capture(self, key: ShapeKey, names: List[str], args: Tuple[torch.Tensor, ...]) -> Optional[Callable]:
        module = _LossModule(self.loss_fn, self.params, names)  # a fresh module per shape: capture patches it
        try:
            return torch.cuda.make_graphed_callables(module, args, num_warmup_iters=2, allow_unused_input=True)
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager steps
            self.eager.add(key)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                if is_out_of_memory(exc):
                    torch.cuda.empty_cache()
            shape = "x".join(str(d) for d in key[0][0])
            self.say(f"CUDA graph capture failed for latents {shape} ({type(exc).__name__}: "
                     f"{(str(exc).splitlines() or [''])[0][:200]}); these steps run without graphs", logging.WARNING)
            return None

    def release(self) -> None:
        """Drop the graphs and their memory pools."""
        self.graphed.clear()
        self.eager.clear()
