"""The weight change of the modules of adapter files (each read by its kind, adapters/), and low-rank
algebra on LoRA factors: the sum of several modules (merge, combine) and the best lower-rank cut (resize).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..adapters import FileModule, default_adapter_kinds
from ..adapters.lora import LoraFactors
from ..errors import LoraFormatError


def read_modules(tensors: Dict[str, torch.Tensor], source: str) -> Dict[str, FileModule]:
    """A file's modules, each read by its adapter kind; refuses key types and shapes no kind reads."""
    return default_adapter_kinds().read_modules(tensors, source)


def low_rank(module: FileModule, name: str, source: str, what: str) -> LoraFactors:
    """The module's LoRA factors, or a LoraFormatError saying `what` cannot use this module."""
    factors = module.low_rank()
    if factors is None:
        raise LoraFormatError(f"{source}: module {name} has no low-rank factors; {what} works on LoRA and LoCon "
                              f"modules only (a LoHa, LoKr or DoRA change is not a product of two factors); "
                              f"merge it into a checkpoint instead; nothing was written")
    return factors


def merged_delta(parts: Sequence[Tuple[FileModule, float]], name: str,
                 base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The fp32 sum of weighted module deltas: LoRA factors stacked into one product (one rounding), other
    kinds' deltas added, all shaped like the first module's delta. A DoRA module's change depends on the
    weight it is applied to (`base`), so with one the changes are taken in turn, each on the weight the
    ones before it made, as the WebUI applies several networks; the result is then shaped like `base`."""
    if any(getattr(module, "needs_base", False) for module, _ in parts):
        if base is None:
            raise LoraFormatError(f"module {name} is DoRA: its change needs the base weight")
        weight = base.to(torch.float32)
        for module, multiplier in parts:
            if getattr(module, "needs_base", False):
                weight = weight + module.delta_on(weight, multiplier)
            else:
                weight = weight + module.delta(multiplier, torch.float32).reshape(weight.shape)
        return weight - base.to(torch.float32)
    factors = [(module.low_rank(), weight) for module, weight in parts]
    if all(f is not None for f, _ in factors):
        return stack(factors, name).delta(dtype=torch.float32)
    shape = parts[0][0].delta_shape
    for module, _ in parts:
        if not fits(module.delta_shape, shape):
            raise LoraFormatError(f"module {name} changes a weight of shape {list(shape)} in one LoRA and "
                                  f"{list(module.delta_shape)} in another; are they for the same model?")
    return sum(module.delta(weight, torch.float32).reshape(shape) for module, weight in parts)


def _as_matrix(shape: Sequence[int]) -> Tuple[int, int]:
    out, rest = int(shape[0]), 1
    for s in shape[1:]:
        rest *= int(s)
    return out, rest


def fits(delta_shape: Sequence[int], weight_shape: Sequence[int]) -> bool:
    """Whether a delta can be added to a weight: the same [out, in*kh*kw] matrix (a Linear delta fits a 1x1
    conv and the other way round; LoHa and LoKr store a conv's change in that flat form)."""
    return _as_matrix(delta_shape) == _as_matrix(weight_shape)


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
