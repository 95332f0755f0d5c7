"""LoHa (LyCORIS `algo=loha`): the change is the element-wise (Hadamard) product of two low-rank products,
`(w1a @ w1b) * (w2a @ w2b) * alpha / rank`, so rank r reaches an effective rank up to r^2.

Keys (A1111 v1.10.1 `network_hada.py`, LyCORIS): `hada_w1_a` [out, r], `hada_w1_b` [r, in*kh*kw],
`hada_w2_a`, `hada_w2_b` (same shapes), `alpha`; rank = hada_w1_b's first dimension. Conv layers keep
the flattened [r, in*kh*kw] form, as LyCORIS writes it (the host reshapes to the layer's weight). No
Tucker core (`hada_t1`/`hada_t2`) is trained. Initialised as LyCORIS does: w2a zero (no change at
step 0), the others random.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch
from torch import nn

from ..errors import LoraFormatError
from .base import AdapterSpec
from .lycoris import LycorisKind

W1A, W1B, W2A, W2B = ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"


class LohaFactors(nn.Module):
    """The four LoHa matrices of one layer."""

    scaled = True

    def __init__(self, out: int, inp: int, kernel: Tuple[int, ...], rank: int):
        super().__init__()
        flat = inp
        for k in kernel:
            flat *= int(k)
        self.rank = rank
        self.w1a = nn.Parameter(torch.randn(out, rank) * 0.1)
        self.w1b = nn.Parameter(torch.randn(rank, flat))
        self.w2a = nn.Parameter(torch.zeros(out, rank))
        self.w2b = nn.Parameter(torch.randn(rank, flat))

    def matrix(self) -> torch.Tensor:
        return (self.w1a @ self.w1b) * (self.w2a @ self.w2b)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {W1A: self.w1a, W1B: self.w1b, W2A: self.w2a, W2B: self.w2b}


class LohaKind(LycorisKind):
    """LoHa; see the module docstring."""

    name = "loha"
    title = "LoHa"
    algo = "loha"
    factor_suffixes = (W1A, W1B, W2A, W2B)

    def make_factors(self, out: int, inp: int, kernel: Tuple[int, ...], rank: int, spec: AdapterSpec) -> nn.Module:
        return LohaFactors(out, inp, kernel, rank)

    def read_factors(self, name: str, parts: Mapping[str, torch.Tensor], source: str):
        missing = [s.lstrip(".") for s in self.factor_suffixes if s not in parts]
        if missing or any(k in parts for k in (".hada_t1", ".hada_t2")):
            what = f"has no {', '.join(missing)}" if missing else "has a Tucker core (hada_t1/t2), which is not read here"
            raise LoraFormatError(f"{source}: LoHa module {name} {what}")
        w1a, w1b, w2a, w2b = (parts[s].to(torch.float32) for s in self.factor_suffixes)
        w1b, w2b = w1b.flatten(1), w2b.flatten(1)
        if w1a.shape[1] != w1b.shape[0] or w2a.shape[1] != w2b.shape[0] or \
                (w1a.shape[0], w1b.shape[1]) != (w2a.shape[0], w2b.shape[1]):
            raise LoraFormatError(f"{source}: LoHa module {name} has shapes {[list(t.shape) for t in (w1a, w1b, w2a, w2b)]}, "
                                  f"which do not multiply")
        return lambda: (w1a @ w1b) * (w2a @ w2b), (w1a.shape[0], w1b.shape[1]), int(w1b.shape[0]), True
