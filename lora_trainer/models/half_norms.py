"""GroupNorm and LayerNorm computed in the half-precision dtype of the base weights (GPU mixed precision).

CUDA autocast runs `group_norm` and `layer_norm` in fp32: each norm casts its bf16/fp16 input up to fp32,
its output (and the SiLU after it) stays fp32, and the next convolution or linear layer casts it back
down; the backward pass does the same again. In an eager SD1.5 step at batch 8 on an H200 those casts
(`aten::copy_`) were a large share of the GPU time (benchmarks/results/2026-11-28-h200-profile-b8-eager.txt).

With the frozen base weights already in bf16/fp16, the norm's input is half precision anyway (the output
of a convolution or linear layer), and PyTorch's CUDA kernels accumulate mean and variance in fp32
internally. Running the norm in the input's dtype therefore only rounds its output to half precision
before the activation instead of after it, which is what a model kept wholly in bf16 does (kohya's
`--full_bf16`, diffusers' half-precision pipelines). A CPU's autocast already runs these norms in bf16,
so there the change is none.

Each norm gets an instance `forward` (models/layer_forwards), which `remove()` takes away again: module,
parameters and state dict stay as they were.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from .layer_forwards import LayerForward, LayerForwards

HALF_DTYPES = (torch.float16, torch.bfloat16)


def half_norms_help(setting: Union[str, bool], device: torch.device, base_dtype: torch.dtype,
                    autocast_dtype) -> bool:
    """`half_precision_norms`: where the base weights are in the half-precision dtype autocast computes in;
    auto only for bf16 on CUDA (a CPU's autocast already keeps these norms in bf16; fp16, with its narrow
    range, keeps autocast's fp32 norms unless asked)."""
    if setting is False or base_dtype not in HALF_DTYPES or autocast_dtype != base_dtype:
        return False
    return setting is True or (torch.device(device).type == "cuda" and base_dtype == torch.bfloat16)


class HalfNorm(LayerForward):
    """One GroupNorm or LayerNorm whose calls run with autocast off, in the dtype of its weights and input
    (an input in another dtype takes the module's own path)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.module
        if n.weight is not None and x.dtype != n.weight.dtype:  # e.g. an fp32 input: as autocast would
            return type(n).forward(n, x)
        with torch.autocast(x.device.type, enabled=False):
            if isinstance(n, nn.GroupNorm):
                return F.group_norm(x, n.num_groups, n.weight, n.bias, n.eps)
            return F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)


class HalfPrecisionNorms(LayerForwards):
    """The frozen GroupNorm/LayerNorm layers of one model in half precision; `remove()` puts them back."""

    def __init__(self, model: nn.Module):
        super().__init__(model, HalfNorm, _convertible)


def _convertible(m: nn.Module) -> bool:
    """Exactly nn.GroupNorm / nn.LayerNorm (subclasses may compute otherwise) with frozen half-precision
    weights (one without weights computes in its input's dtype)."""
    if type(m) not in (nn.GroupNorm, nn.LayerNorm):
        return False
    params = [p for p in (m.weight, m.bias) if p is not None]
    return all(not p.requires_grad and p.dtype in HALF_DTYPES for p in params)
