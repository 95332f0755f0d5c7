"""What the LoRA tools read and write: `path[:weight]` arguments, source LoRA files with their
provenance, output precision, output-path checks and the metadata of derived LoRA files."""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import torch

from ..errors import LoraTrainerError
from ..formats.kohya import load_kohya_lora
from ..adapters import FileModule
from .deltas import read_modules

PathLike = Union[str, Path]
PRECISIONS: Dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class LoraSource:
    """A LoRA file and the weight it is applied with."""

    path: Path
    weight: float = 1.0


def parse_lora_arg(text: str) -> LoraSource:
    """`a.safetensors:0.8` -> (a.safetensors, 0.8); the weight is optional (1.0).

    Only a suffix after the last colon that parses as a finite number is a weight, so Windows drive
    letters (`C:\\loras\\a.safetensors`) and other colons stay in the path; an existing file wins.
    """
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).is_file():
        try:
            weight = float(tail)
        except ValueError:
            if Path(head).is_file() or head.lower().endswith(".safetensors"):
                raise LoraTrainerError(f"LoRA weight {tail!r} in {text!r} is not a number; write the weight "
                                       f"after the colon, e.g. {head}:0.8") from None
            return LoraSource(Path(text))
        if not math.isfinite(weight):
            raise LoraTrainerError(f"LoRA weight {tail!r} in {text!r} is not a finite number")
        return LoraSource(Path(head), weight)
    return LoraSource(Path(text))


def as_source(value: Union[LoraSource, PathLike, tuple]) -> LoraSource:
    """Accept a LoraSource, a path (weight 1.0) or a (path, weight) pair."""
    if isinstance(value, LoraSource):
        return value
    if isinstance(value, tuple):
        return LoraSource(Path(value[0]), float(value[1]))
    return LoraSource(Path(value))


def file_data_hash(path: PathLike) -> str:
    """sha256 of a safetensors file's bytes after the header (kohya's `sshs_model_hash`)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n)
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadedLora:
    """A source LoRA file, its modules and metadata."""

    source: LoraSource
    modules: Dict[str, FileModule]
    metadata: Dict[str, str]
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.source.path.name

    def provenance(self) -> Dict[str, Any]:
        """File name, hash and weight, for the metadata of what is made from it."""
        return {"file": self.name, "sshs_model_hash": file_data_hash(self.source.path),
                "weight": self.source.weight, "ss_output_name": self.metadata.get("ss_output_name", "")}


def load_lora(source: LoraSource) -> LoadedLora:
    """Read an adapter file into its modules (CPU); key types no adapter kind reads are refused."""
    tensors, metadata = load_kohya_lora(source.path)
    dtype = next(t.dtype for t in tensors.values() if t.dim() > 0 and t.is_floating_point())
    return LoadedLora(source, read_modules(tensors, source.path.name), metadata, dtype)


def precision_dtype(precision: Optional[str]) -> Optional[torch.dtype]:
    """`fp16` / `bf16` / `fp32` -> torch dtype; None keeps the source's dtype."""
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise LoraTrainerError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def check_output(out: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    """Refuse to write over an input, or over an existing file unless `overwrite`."""
    if out.suffix.lower() != ".safetensors":
        raise LoraTrainerError(f"output {str(out)!r} must end in .safetensors")
    target = out.resolve()
    for path in inputs:
        if path.exists() and path.resolve() == target:
            raise LoraTrainerError(f"output {str(out)!r} is also an input; choose another file name")
    if out.exists() and not overwrite:
        raise LoraTrainerError(f"output {str(out)!r} already exists; choose another name, or overwrite it "
                               f"(--overwrite)")


def derived_metadata(source: Dict[str, str], out: Path, rank: int, extra: Dict[str, Any]) -> Dict[str, str]:
    """Metadata of a LoRA made from `source`'s: its `ss_*` / `modelspec.*` with the new rank and name.

    Every module of a derived file has alpha = rank (scale 1), so `ss_network_alpha` is the rank too.
    """
    meta = {k: v for k, v in source.items() if k.startswith(("ss_", "modelspec."))}
    meta.update(ss_network_dim=str(rank), ss_network_alpha=str(rank), ss_output_name=out.stem)
    meta["modelspec.title"] = out.stem
    args = _json_dict(meta.get("ss_network_args"))
    if args is not None and ("conv_dim" in args or "conv_alpha" in args):
        args.update(conv_dim=str(rank), conv_alpha=str(rank))
        meta["ss_network_args"] = json.dumps(args)
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


def _json_dict(text: Optional[str]) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
