"""The weight change of one kohya LoRA / LoCon module, and low-rank algebra on it.

A module is `down` [r, in] (Linear) or [r, in, kh, kw] (Conv: 1x1, or LoCon's 3x3), `up` [out, r] or
[out, r, 1, 1], and `alpha`; it changes its base weight by
`delta = (up.flatten(1) @ down.flatten(1)).reshape(out, in[, kh, kw]) * alpha / r`
(a conv followed by a 1x1 conv is one conv whose kernel is that product).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import torch

from ..errors import LoraFormatError
from ..formats.kohya import LORA_SUFFIXES, lora_modules

# Key fragments of LyCORIS / diffusers formats this tool does not read, and what they are.
OTHER_FORMATS = (("hada_", "LoHa"), ("lokr_", "LoKr"), ("lora_mid", "LoCon with a Tucker/CP core (lora_mid)"),
                 ("dora_scale", "DoRA"), ("lora_A", "peft/diffusers"), (".lora.down.", "diffusers"),
                 (".diff", "a full weight difference (LyCORIS full)"))


@dataclass
class LoraFactors:
    """One module's `down`, `up` and `alpha` (the scale is alpha / rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def delta_shape(self) -> Tuple[int, ...]:
        """[out, in] (Linear) or [out, in, kh, kw] (Conv)."""
        return (int(self.up.shape[0]),) + tuple(self.down.shape[1:])

    def matrices(self, dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
        """(up [out, r] with the scale folded in, down [r, in * kh * kw]), so delta = up @ down."""
        return self.up.flatten(1).to(dtype) * self.scale, self.down.flatten(1).to(dtype)

    def delta(self, weight: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`weight` times this module's weight change, shaped like `delta_shape`."""
        up, down = self.matrices(dtype)
        return ((up * weight) @ down).reshape(self.delta_shape)

    def to(self, dtype: torch.dtype) -> "LoraFactors":
        return LoraFactors(self.down.to(dtype), self.up.to(dtype), self.alpha)

    def kohya_tensors(self, name: str) -> Dict[str, torch.Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`."""
        return {f"{name}.lora_down.weight": self.down.contiguous(), f"{name}.lora_up.weight": self.up.contiguous(),
                f"{name}.alpha": torch.tensor(float(self.alpha))}


def lora_factors(tensors: Dict[str, torch.Tensor], source: str) -> Dict[str, LoraFactors]:
    """Group a kohya file's tensors into modules; refuse key types and shapes that are not LoRA/LoCon."""
    for key in sorted(tensors):
        if not key.endswith(LORA_SUFFIXES):
            kind = next((what for frag, what in OTHER_FORMATS if frag in key), "an unknown kind")
            raise LoraFormatError(f"{source}: key {key!r} is {kind}; only plain LoRA/LoCon keys "
                                  f"(*.lora_down.weight, *.lora_up.weight, *.alpha) can be used here")
    out: Dict[str, LoraFactors] = {}
    for name, parts in sorted(lora_modules(tensors).items()):
        if "down" not in parts or "up" not in parts:
            missing = "lora_up" if "down" in parts else "lora_down"
            raise LoraFormatError(f"{source}: module {name} has no {missing}.weight; the file is incomplete")
        down, up = parts["down"], parts["up"]
        rank = down.shape[0]
        if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != rank or \
                (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
            raise LoraFormatError(f"{source}: module {name} has lora_down {tuple(down.shape)} and lora_up "
                                  f"{tuple(up.shape)}, which are not LoRA/LoCon shapes")
        alpha = float(parts["alpha"].float().item()) if "alpha" in parts else float(rank)
        out[name] = LoraFactors(down, up, alpha)
    return out


def _squeeze_1x1(shape: Sequence[int]) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape


def fits(delta_shape: Sequence[int], weight_shape: Sequence[int]) -> bool:
    """Whether a delta can be added to a weight (a Linear delta fits a 1x1 conv and the other way round)."""
    return _squeeze_1x1(delta_shape) == _squeeze_1x1(weight_shape)


def low_rank_svd(up: torch.Tensor, down: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of `up @ down` ([out, r] @ [r, n]) without forming it: QR of both factors, SVD of the small core.

    Returns U [out, k], S [k] (descending), Vh [k, n] with `up @ down == U @ diag(S) @ Vh`.
    """
    qa, ra = torch.linalg.qr(up)
    qb, rb = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(ra @ rb.T, full_matrices=False)
    return qa @ u, s, vh @ qb.T


@dataclass
class Truncation:
    """A module cut to a lower rank and how much of it was kept."""

    factors: LoraFactors
    kept: float  # sum of the kept squared singular values
    total: float  # sum of all squared singular values (= ||delta||_F^2)

    @property
    def energy(self) -> float:
        """Kept fraction of ||delta||_F^2 (1.0 for a zero delta)."""
        return self.kept / self.total if self.total > 0 else 1.0

    @property
    def error(self) -> float:
        """Relative Frobenius error ||delta - delta_r|| / ||delta|| (0.0 for a zero delta)."""
        return max(0.0, 1.0 - self.energy) ** 0.5


def truncate(factors: LoraFactors, rank: int, dtype: torch.dtype) -> Truncation:
    """The best rank-`rank` approximation (Eckart-Young) of a module's delta, as factors with alpha = rank.

    The singular values are split evenly between up and down (sqrt each), which keeps fp16 in range.
    """
    up, down = factors.matrices(torch.float64)
    u, s, vh = low_rank_svd(up, down)
    keep = max(1, min(rank, int(s.numel())))
    root = s[:keep].sqrt()
    new_up = (u[:, :keep] * root).reshape((up.shape[0], keep) + tuple(factors.up.shape[2:]))
    new_down = (root[:, None] * vh[:keep]).reshape((keep,) + tuple(factors.down.shape[1:]))
    energy = s.pow(2)
    return Truncation(LoraFactors(new_down.to(dtype), new_up.to(dtype), float(keep)),
                      float(energy[:keep].sum()), float(energy.sum()))


def stack(parts: Sequence[Tuple[LoraFactors, float]], name: str) -> LoraFactors:
    """One module equal to the weighted sum of several (float64): downs stacked, each up scaled by
    weight * alpha / rank, alpha = total rank (scale 1). Linear and 1x1-conv forms of a module mix."""
    first = parts[0][0]
    downs, ups = [], []
    for factors, weight in parts:
        if not fits(factors.delta_shape, first.delta_shape):
            raise LoraFormatError(f"module {name} changes a weight of shape {list(first.delta_shape)} in one "
                                  f"LoRA and {list(factors.delta_shape)} in another; are they for the same model?")
        downs.append(factors.down.to(torch.float64).reshape((factors.rank,) + tuple(first.down.shape[1:])))
        up = factors.up.to(torch.float64) * (weight * factors.scale)
        ups.append(up.reshape(tuple(up.shape[:2]) + tuple(first.up.shape[2:])))
    down, up = torch.cat(downs, dim=0), torch.cat(ups, dim=1)
    return LoraFactors(down, up, float(down.shape[0]))
