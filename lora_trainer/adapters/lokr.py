"""LoKr (LyCORIS `algo=lokr`): the change is a Kronecker product `kron(w1, w2)`, w1 small and full, w2
full or low-rank (`w2a @ w2b`), so a tiny file can change a whole weight.

Shapes: out = o1 * o2 and in = i1 * i2 split by `factor` as LyCORIS does (-1: the two most balanced
factors, the smaller one for w1; f > 0: f and dim / f); w1 = `lokr_w1` [o1, i1]; w2 = `lokr_w2`
[o2, i2(, kh, kw)] when rank >= max(o2, i2) / 2, else `lokr_w2_a` [o2, r] @ `lokr_w2_b` [r, i2*kh*kw].
Scale (A1111 v1.10.1 `network_lokr.py`): alpha / rank when w2 is low-rank, else 1 (the host has no rank
then). No Tucker core (`lokr_t2`) and no low-rank w1 are trained. Initialised as LyCORIS: w1 random, w2
(or w2b) zero.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from ..errors import LoraFormatError
from .base import AdapterSpec
from .lycoris import LycorisKind

W1, W2, W2A, W2B = ".lokr_w1", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b"
OTHER_KEYS = (".lokr_w1_a", ".lokr_w1_b", ".lokr_t2")


def factorization(dimension: int, factor: int = -1) -> Tuple[int, int]:
    """(m, n) with m * n = dimension and m <= n: `factor` and dimension / factor when it divides, else the
    most balanced pair whose smaller part is at most `factor` (any, for -1) - LyCORIS's split."""
    if factor > 0 and dimension % factor == 0:
        return min(factor, dimension // factor), max(factor, dimension // factor)
    limit = dimension if factor <= 0 else factor
    best = (1, dimension)
    for m in range(2, int(math.isqrt(dimension)) + 1):
        if dimension % m == 0 and m <= limit:
            best = (m, dimension // m)
    return best


class LokrFactors(nn.Module):
    """w1 [o1, i1] and w2 (full, or w2a @ w2b) of one layer."""

    def __init__(self, out: int, inp: int, kernel: Tuple[int, ...], rank: int, factor: int):
        super().__init__()
        o1, o2 = factorization(out, factor)
        i1, i2 = factorization(inp, factor)
        flat = i2
        for k in kernel:
            flat *= int(k)
        self.rank = rank
        self.scaled = rank < max(o2, i2) / 2
        self.w1 = nn.Parameter(torch.empty(o1, i1))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        if self.scaled:
            self.w2a = nn.Parameter(torch.empty(o2, rank))
            nn.init.kaiming_uniform_(self.w2a, a=math.sqrt(5))
            self.w2b = nn.Parameter(torch.zeros(rank, flat))
        else:
            self.w2 = nn.Parameter(torch.zeros((o2, i2) + tuple(int(k) for k in kernel)))

    def matrix(self) -> torch.Tensor:
        w2 = self.w2a @ self.w2b if self.scaled else self.w2.flatten(1)
        return torch.kron(self.w1, w2)

    def tensors(self) -> Dict[str, torch.Tensor]:
        if self.scaled:
            return {W1: self.w1, W2A: self.w2a, W2B: self.w2b}
        return {W1: self.w1, W2: self.w2}


class LokrKind(LycorisKind):
    """LoKr; see the module docstring."""

    name = "lokr"
    title = "LoKr"
    algo = "lokr"
    extra_args = {"factor": int}
    factor_suffixes = (W1, W2, W2A, W2B)

    def resolved(self, spec: AdapterSpec) -> Dict[str, Any]:
        args = super().resolved(spec)
        args.setdefault("factor", -1)
        return args

    def make_factors(self, out: int, inp: int, kernel: Tuple[int, ...], rank: int, spec: AdapterSpec) -> nn.Module:
        return LokrFactors(out, inp, kernel, rank, int(self.resolved(spec)["factor"]))

    def read_factors(self, name: str, parts: Mapping[str, torch.Tensor], source: str):
        other = [k.lstrip(".") for k in OTHER_KEYS if k in parts]
        if other or W1 not in parts:
            what = f"has {', '.join(other)} (a low-rank w1 or Tucker core)" if other else "has no lokr_w1"
            raise LoraFormatError(f"{source}: LoKr module {name} {what}, which is not read here")
        w1 = parts[W1].to(torch.float32)
        if W2 in parts:
            w2 = parts[W2].to(torch.float32).flatten(1)
            w2_shape, rank, scaled = tuple(w2.shape), max(w2.shape), False
            build_w2 = lambda: w2  # noqa: E731
        elif W2A in parts and W2B in parts:
            w2a, w2b = parts[W2A].to(torch.float32), parts[W2B].to(torch.float32).flatten(1)
            if w2a.shape[1] != w2b.shape[0]:
                raise LoraFormatError(f"{source}: LoKr module {name}: lokr_w2_a {list(w2a.shape)} and lokr_w2_b "
                                      f"{list(w2b.shape)} do not multiply")
            w2_shape, rank, scaled = (w2a.shape[0], w2b.shape[1]), int(w2b.shape[0]), True
            build_w2 = lambda: w2a @ w2b  # noqa: E731
        else:
            raise LoraFormatError(f"{source}: LoKr module {name} has no lokr_w2 (nor lokr_w2_a and lokr_w2_b)")
        shape = (w1.shape[0] * w2_shape[0], w1.shape[1] * w2_shape[1])
        return lambda: torch.kron(w1, build_w2()), shape, rank, scaled
