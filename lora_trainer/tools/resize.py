"""Re-rank a LoRA by SVD: each module's delta is cut to its best rank-R approximation.

The error reported per module is the relative Frobenius error ||dW - dW_R|| / ||dW|| (from the singular
values, so exact up to the output dtype's rounding); overall it is the same over all modules together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import LoraTrainerError
from ..formats.kohya import save_kohya_lora
from ..formats.sidecar import copy_sidecars
from .deltas import low_rank, truncate
from .files import LoraSource, PathLike, check_output, derived_metadata, load_lora, precision_dtype


@dataclass
class ModuleResize:
    """One module before and after."""

    name: str
    rank: int
    new_rank: int
    error: float  # ||dW - dW_R||_F / ||dW||_F


@dataclass
class ResizeResult:
    """What `resize_lora` wrote."""

    path: Path
    source: Path
    rank: int
    error: float  # over all modules: sqrt(sum ||dW - dW_R||^2 / sum ||dW||^2)
    modules: List[ModuleResize] = field(default_factory=list)

    def summary(self) -> str:
        worst = max(self.modules, key=lambda m: m.error)
        return (f"{self.path.name}: rank {self.rank}, relative error {self.error:.2%} overall, "
                f"largest {worst.error:.2%} in {worst.name}")


def resize_lora(lora: PathLike, rank: int, out: PathLike, precision: Optional[str] = None,
                overwrite: bool = False) -> ResizeResult:
    """Write `out`: `lora` with every module cut to rank `rank` (modules of lower rank keep theirs).

    `precision` (fp16 / bf16 / fp32) sets the output dtype; None keeps the source's.
    """
    if rank < 1:
        raise LoraTrainerError(f"rank must be at least 1, got {rank}")
    source, out = LoraSource(Path(lora)), Path(out)
    check_output(out, [source.path], overwrite)
    loaded = load_lora(source)
    dtype = precision_dtype(precision) or loaded.dtype
    tensors: Dict[str, torch.Tensor] = {}
    result = ResizeResult(out, source.path, rank, 0.0)
    kept = total = 0.0
    for name, module in sorted(loaded.modules.items()):
        factors = low_rank(module, name, loaded.name, "resize")
        cut = truncate(factors, rank, dtype)
        tensors.update(cut.factors.kohya_tensors(name))
        result.modules.append(ModuleResize(name, factors.rank, cut.factors.rank, cut.error))
        kept, total = kept + cut.kept, total + cut.total
    result.error = max(0.0, 1.0 - kept / total) ** 0.5 if total > 0 else 0.0
    extra = {"lora_trainer_resize": {"source": loaded.provenance(), "rank": rank,
                                     "relative_error": round(result.error, 6)}}
    new_rank = max(m.new_rank for m in result.modules)
    save_kohya_lora(out, tensors, derived_metadata(loaded.metadata, out, new_rank, extra))
    return result


def resized_path(lora: PathLike, rank: int) -> Path:
    """Where `resize_beside` writes: `<name>_r<rank>.safetensors` beside the LoRA."""
    lora = Path(lora)
    return lora.with_name(f"{lora.stem}_r{rank}.safetensors")


def resize_beside(lora: PathLike, rank: int, overwrite: bool = False) -> ResizeResult:
    """`resize_lora` into `<name>_r<rank>.safetensors` beside `lora`, with copies of its card sidecars
    (`<name>.json`, `<name>.preview.png`) when it has them."""
    result = resize_lora(lora, rank, resized_path(lora, rank), overwrite=overwrite)
    copy_sidecars(Path(lora), result.path)
    return result
