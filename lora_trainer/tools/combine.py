"""One LoRA equal to the weighted sum of several.

Exact: each module's downs are stacked (rank = the sum of the sources' ranks) with each source's
weight * alpha / rank folded into its up, and alpha = the stacked rank (scale 1); a module present in
only some sources stacks only those. With a rank R: the stacked module is cut to its best rank-R
approximation by SVD, and the kept energy (sum of kept squared singular values / all) is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import LoraFormatError, LoraTrainerError
from ..formats.kohya import save_kohya_lora
from ..adapters.lora import LoraFactors
from .deltas import low_rank, stack, truncate
from .files import LoraSource, PathLike, as_source, check_output, derived_metadata, load_lora, precision_dtype


@dataclass
class ModuleCombine:
    """One module of the combined LoRA."""

    name: str
    sources: int  # how many of the LoRAs have this module
    rank: int  # rank written
    energy: float  # kept fraction of ||sum of deltas||_F^2 (1.0 when exact)


@dataclass
class CombineResult:
    """What `combine_loras` wrote."""

    path: Path
    loras: List[LoraSource]
    rank: Optional[int]  # None: exact (stacked ranks)
    energy: float  # kept fraction over all modules together
    modules: List[ModuleCombine] = field(default_factory=list)

    def summary(self) -> str:
        how = "exact (stacked ranks)" if self.rank is None else f"rank {self.rank}, {self.energy:.2%} energy kept"
        return f"{self.path.name}: {len(self.loras)} LoRAs, {len(self.modules)} modules, {how}"


def _check_same_base(metadata: Sequence[Tuple[str, Dict[str, str]]]) -> None:
    versions = {(name, meta["ss_base_model_version"]) for name, meta in metadata if meta.get("ss_base_model_version")}
    if len({v for _, v in versions}) > 1:
        listed = ", ".join(f"{n}: {v}" for n, v in sorted(versions))
        raise LoraFormatError(f"these LoRAs are for different base models ({listed}); combine LoRAs of one kind")


def combine_loras(loras: Sequence[Union[LoraSource, PathLike, tuple]], out: PathLike, rank: Optional[int] = None,
                  precision: Optional[str] = None, overwrite: bool = False) -> CombineResult:
    """Write `out`: the weighted sum of `loras` ((path, weight) pairs); exact, or cut to `rank` by SVD.

    `precision` (fp16 / bf16 / fp32) sets the output dtype; None keeps the first source's.
    """
    sources, out = [as_source(s) for s in loras], Path(out)
    if not sources:
        raise LoraTrainerError("no LoRA to combine; give at least one LoRA file")
    if rank is not None and rank < 1:
        raise LoraTrainerError(f"rank must be at least 1, got {rank}")
    check_output(out, [s.path for s in sources], overwrite)
    loaded = [load_lora(s) for s in sources]
    _check_same_base([(lora.name, lora.metadata) for lora in loaded])
    dtype = precision_dtype(precision) or loaded[0].dtype
    parts: Dict[str, List[Tuple[LoraFactors, float]]] = {}
    for lora in loaded:
        for name, factors in lora.modules.items():
            parts.setdefault(name, []).append((low_rank(factors, name, lora.name, "combine"), lora.source.weight))
    tensors: Dict[str, torch.Tensor] = {}
    result = CombineResult(out, sources, rank, 1.0)
    kept = total = 0.0
    for name in sorted(parts):
        stacked = stack(parts[name], name)
        if rank is None:
            factors, energy = stacked.to(dtype), 1.0
        else:
            cut = truncate(stacked, rank, dtype)
            factors, energy = cut.factors, cut.energy
            kept, total = kept + cut.kept, total + cut.total
        tensors.update(factors.kohya_tensors(name))
        result.modules.append(ModuleCombine(name, len(parts[name]), factors.rank, energy))
    result.energy = kept / total if total > 0 else 1.0
    extra = {"ss_merged_from": ", ".join(lora.name for lora in loaded),
             "lora_trainer_combine": {"loras": [lora.provenance() for lora in loaded],
                                      "rank": rank if rank is not None else "exact",
                                      "kept_energy": round(result.energy, 6)}}
    new_rank = max(m.rank for m in result.modules)
    save_kohya_lora(out, tensors, derived_metadata(loaded[0].metadata, out, new_rank, extra))
    return result
