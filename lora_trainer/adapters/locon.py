"""LoCon (LyCORIS `algo=locon`, kohya's LoRA for convolutions): LoRA on the attention layers and on the
ResNet blocks' convolutions, the down/up samplers and their Linear / 1x1 layers.

A module is stored exactly like a kohya LoRA module (`lora_down.weight` [r, in(, kh, kw)], `lora_up.weight`
[out, r(, 1, 1)], `alpha`; A1111's `network_lora.py` reads it, a 3x3 down being a 3x3 conv followed by a 1x1
up), so files are read back by the LoRA kind. 3x3 layers use `conv_dim` / `conv_alpha`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterSpec
from .lora import DOWN, UP
from .lycoris import LycorisKind


class LoconFactors(nn.Module):
    """down [r, in(, kh, kw)] (kaiming-uniform) and up [out, r(, 1, 1)] (zero)."""

    scaled = True

    def __init__(self, out: int, inp: int, kernel: Tuple[int, ...], rank: int):
        super().__init__()
        tail = tuple(kernel)
        self.rank = rank
        self.down = nn.Parameter(torch.empty((rank, inp) + tail))
        self.up = nn.Parameter(torch.zeros((out, rank) + (1,) * len(tail)))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def matrix(self) -> torch.Tensor:
        return self.up.flatten(1) @ self.down.flatten(1)

    def forward_change(self, x: torch.Tensor, base: nn.Module, scale: float) -> torch.Tensor:
        """The change's output without forming the weight: x -> down -> up (as kohya's LoRA modules)."""
        down, up = self.down.to(x.dtype), self.up.to(x.dtype)
        if isinstance(base, nn.Conv2d):
            hidden = F.conv2d(x, down, None, base.stride, base.padding, base.dilation, base.groups)
            return F.conv2d(hidden, up) * scale
        return F.linear(F.linear(x, down), up) * scale

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {DOWN: self.down, UP: self.up}


class LoconKind(LycorisKind):
    """LoCon; see the module docstring."""

    name = "locon"
    title = "LoCon"
    algo = "locon"
    factor_suffixes = (DOWN, UP)

    def make_factors(self, out: int, inp: int, kernel: Tuple[int, ...], rank: int, spec: AdapterSpec) -> nn.Module:
        return LoconFactors(out, inp, kernel, rank)

    def read_factors(self, name: str, parts: Mapping[str, Any], source: str):
        """(The registry offers `lora_*` keys to the LoRA kind first, which reads LoCon files the same way.)"""
        own = {k: v for k, v in parts.items() if k in (DOWN, UP)}
        factors = self.lora().read_module(name, own, source)  # its shape checks
        return factors.up.flatten(1).float() @ factors.down.flatten(1).float(), factors.rank, True

    @staticmethod
    def lora():
        from . import default_adapter_kinds

        return default_adapter_kinds().get("lora")
