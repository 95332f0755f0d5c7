"""DoRA (weight-decomposed adaptation) as the hosts apply it: a strategy the LyCORIS kinds share.

A1111 v1.10.1 (`extensions-builtin/Lora/network.py`, `apply_weight_decompose`) and Forge Neo rescale the
merged weight `W + dW` by `dora_scale / norm`, the norm taken over the OUTPUT axis (and the kernel) for
each input column: for a weight [out, in(, kh, kw)] the norm and `dora_scale` have shape [1, in(, 1, 1)].
The change a host applies is then `multiplier * (rescaled - W)`. The LyCORIS package's default
(`wd_on_out=True`) and peft's DoRA normalise per output row instead; a file trained that way loads
without a message and applies a different weight, so this module trains in the hosts' axis.

In a file, `<name>.dora_scale` sits beside the kind's own keys.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import torch

from ..errors import LoraFormatError

DORA_SCALE = ".dora_scale"


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """The norm of each input column over the output axis (and kernel): shape [1, in, 1...] (A1111's axis)."""
    flat = weight.transpose(0, 1).reshape(weight.shape[1], -1)
    return flat.norm(dim=1).reshape((1, weight.shape[1]) + (1,) * (weight.dim() - 2))


def initial_scale(weight: torch.Tensor) -> torch.Tensor:
    """`dora_scale` at the start of training (fp32): the base weight's own column norms, so nothing changes."""
    return column_norm(weight.detach().to(torch.float32))


def rescaled_delta(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`(W + dW) * scale / ||W + dW||_columns - W`: the change DoRA makes at multiplier 1 (in delta's dtype)."""
    base = base.to(delta.dtype)
    merged = base + delta
    return merged * (scale.to(delta.dtype) / column_norm(merged)) - base


def scale_shape(weight_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The shape of `dora_scale` for a weight of `weight_shape`: [1, in(, 1, 1)]."""
    return (1, int(weight_shape[1])) + (1,) * (len(weight_shape) - 2)


def check_scale(name: str, scale: torch.Tensor, source: str) -> None:
    """Refuse a `dora_scale` that is not in the hosts' axis (e.g. a per-output-row [out, 1] file)."""
    if scale.dim() < 2 or scale.shape[0] != 1:
        raise LoraFormatError(f"{source}: module {name} has dora_scale {list(scale.shape)}; the hosts read "
                              f"[1, in(, 1, 1)] (a norm per input column). A per-output-row DoRA (LyCORIS "
                              f"wd_on_out, peft) would apply a different weight there, so it is not used")


class DoraModule:
    """A file module with `dora_scale`: its change depends on the base weight, so merge passes that in
    (`delta_on`); it has no low-rank factors (combine and resize refuse it)."""

    needs_base = True

    def __init__(self, inner: Any, scale: torch.Tensor, name: str, source: str):
        self.inner = inner
        self.suffix = inner.suffix
        self.rank = inner.rank
        self.alpha = inner.alpha
        self.delta_shape = inner.delta_shape
        check_scale(name, scale, source)
        self.scale = scale

    def delta(self, weight: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise LoraFormatError("a DoRA module's change depends on the base weight; use delta_on(base)")

    def delta_on(self, base: torch.Tensor, weight: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`weight * (rescaled(W + dW) - W)` for base weight `base`, shaped like `base`."""
        delta = self.inner.delta(1.0, dtype).reshape(base.shape)
        return weight * rescaled_delta(base.to(dtype), delta, self.scale.reshape(scale_shape(tuple(base.shape))))

    def low_rank(self) -> None:
        return None


def with_dora(module: Any, parts: Mapping[str, torch.Tensor], name: str, source: str) -> Any:
    """`module` itself, or a DoraModule around it when the file has `<name>.dora_scale`."""
    scale: Optional[torch.Tensor] = parts.get(DORA_SCALE)
    return module if scale is None else DoraModule(module, scale, name, source)
