"""Bake LoRAs into a single-file checkpoint: W' = W + sum_i weight_i * up_i @ down_i * alpha_i / rank_i.

The result has exactly the base's keys, in the base's dtypes (or one `precision`), the base's
non-weight entries and metadata, and a `lora_trainer_merge` metadata entry saying what was merged at
which weight; the base's `<name>.yaml` is copied beside it, so the WebUI loads it as a normal
checkpoint. Every LoRA key is checked against the base before anything is read in full or written.
Everything happens on the CPU, one weight at a time.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import LoraFormatError, ModelLoadError
from ..models import FamilyRegistry, ModelFamily, default_families
from ..models.loading import read_state_dict
from ..network.checkpoint_keys import WeightRef
from ..utils.atomic import atomic_path, atomic_save_safetensors
from ..adapters import FileModule
from .deltas import fits, merged_delta
from .files import LoadedLora, LoraSource, PathLike, as_source, check_output, load_lora, precision_dtype

Shapes = Dict[str, Tuple[int, ...]]


@dataclass
class MergedLora:
    """One LoRA as merged: file, weight and how many checkpoint weights it changed."""

    file: str
    weight: float
    modules: int


@dataclass
class MergeResult:
    """What `merge_loras` wrote."""

    path: Path
    base: Path
    family: str
    precision: str  # "fp16" / "bf16" / "fp32", or "base dtypes"
    loras: List[MergedLora] = field(default_factory=list)
    weights_changed: int = 0  # checkpoint weights that differ from the base

    def summary(self) -> str:
        parts = ", ".join(f"{m.file} x{m.weight:g} ({m.modules} modules)" for m in self.loras)
        return f"{self.path.name}: {self.base.name} + {parts}; {self.weights_changed} weights changed"


def checkpoint_header(path: Path) -> Tuple[Shapes, Dict[str, str], Optional[Dict[str, torch.Tensor]]]:
    """(key shapes, metadata, state dict or None): a .safetensors header is read without its tensors."""
    if path.is_dir():
        raise ModelLoadError(f"base {str(path)!r} is a folder; merging needs a single-file checkpoint "
                             f"(.safetensors or .ckpt)")
    if not path.is_file():
        raise ModelLoadError(f"base checkpoint {str(path)!r} does not exist")
    if path.suffix.lower() != ".safetensors":
        state = read_state_dict(path)
        return {k: tuple(v.shape) for k, v in state.items()}, {}, state
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            return shapes, dict(fh.metadata() or {}), None
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported the same way
        raise ModelLoadError(f"base checkpoint {str(path)!r} cannot be read: {exc}".splitlines()[0]) from None


Part = Tuple[FileModule, float, Optional[Tuple[int, int]]]  # (module, weight, rows of a packed weight)


def plan_merge(loras: Sequence[LoadedLora], targets: Dict[str, WeightRef], shapes: Shapes, family: ModelFamily,
               base_name: str) -> Dict[str, List[Part]]:
    """{checkpoint key: [(module, weight, rows), ...]}; refuses the first LoRA key that does not fit the base."""
    plan: Dict[str, List[Part]] = {}
    for lora in loras:
        for name, factors in sorted(lora.modules.items()):
            ref = targets.get(name)
            if ref is None:
                raise LoraFormatError(f"{lora.name}: key {name}{factors.suffix} does not fit {base_name}: this "
                                      f"{family.title} checkpoint has no such module (a LoRA for another model "
                                      f"family?); nothing was written")
            if not fits(factors.delta_shape, ref.shape(shapes)):
                raise LoraFormatError(f"{lora.name}: key {name}{factors.suffix} does not fit {base_name}: it "
                                      f"changes a {list(factors.delta_shape)} weight but {ref.key} is "
                                      f"{list(ref.shape(shapes))}; nothing was written")
            plan.setdefault(ref.key, []).append((factors, lora.source.weight, ref.rows))
    return plan


def apply_plan(state: Dict[str, torch.Tensor], plan: Dict[str, List[Part]], dtype: Optional[torch.dtype]) -> None:
    """Add the deltas in fp32 (all LoRAs of a weight, or of one row block of a packed weight, in one product
    of their stacked factors), then cast each weight back to its own dtype (or `dtype`), in place."""
    for key, parts in plan.items():
        weight = state[key].to(torch.float32, copy=True)
        blocks: Dict[Optional[Tuple[int, int]], List[Tuple[FileModule, float]]] = {}
        for module, scale, rows in parts:
            blocks.setdefault(rows, []).append((module, scale))
        for rows, block in blocks.items():
            target = weight if rows is None else weight[rows[0]:rows[1]]
            target += merged_delta(block, key, target).reshape(target.shape)  # DoRA: on its weight
        state[key] = weight.to(dtype or state[key].dtype)
    if dtype is not None:
        for key, value in state.items():
            if value.is_floating_point() and key not in plan:
                state[key] = value.to(dtype)


def _unshared(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Copies of tensors that share storage (.ckpt files have them; safetensors refuses them)."""
    seen, out = set(), {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        out[key] = value.clone() if ptr is not None and ptr in seen else value
        seen.add(ptr)
    return out


def merge_loras(base: PathLike, loras: Sequence[Union[LoraSource, PathLike, tuple]], out: PathLike,
                precision: Optional[str] = None, families: Optional[FamilyRegistry] = None,
                overwrite: bool = False) -> MergeResult:
    """Write `out`: the single-file checkpoint `base` with `loras` ((path, weight) pairs) baked in.

    `precision` (fp16 / bf16 / fp32) casts every floating-point tensor; None keeps each tensor's dtype.
    A LoRA key that does not fit the base raises LoraFormatError naming it, before anything is written.
    """
    base, out = Path(base), Path(out)
    sources = [as_source(s) for s in loras]
    if not sources:
        raise LoraFormatError("no LoRA to merge; give at least one LoRA file")
    check_output(out, [base] + [s.path for s in sources], overwrite)
    dtype = precision_dtype(precision)
    loaded = [load_lora(s) for s in sources]
    shapes, metadata, state = checkpoint_header(base)
    family = (families or default_families()).detect(shapes.keys(), shapes, source=str(base))
    plan = plan_merge(loaded, family.checkpoint_lora_keys(shapes), shapes, family, base.name)
    state = state if state is not None else read_state_dict(base)
    apply_plan(state, plan, dtype)
    result = MergeResult(out, base, family.name, precision or "base dtypes", weights_changed=len(plan))
    for lora in loaded:
        result.loras.append(MergedLora(lora.name, lora.source.weight, len(lora.modules)))
    metadata = dict(metadata)
    metadata["lora_trainer_merge"] = json.dumps({"base": base.name, "precision": result.precision,
                                                 "loras": [lora.provenance() for lora in loaded]})
    atomic_save_safetensors(out, _unshared(state), metadata)
    config = base.with_suffix(".yaml")
    if config.is_file():  # the WebUI finds a checkpoint's original config beside it
        with atomic_path(out.with_suffix(".yaml")) as tmp:
            shutil.copyfile(config, tmp)
    return result
