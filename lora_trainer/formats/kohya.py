"""kohya-format adapter files: per module the keys of its adapter kind (adapters/; for LoRA
`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`).

Saved atomically with `ss_*` training metadata, `modelspec.*` and the `sshs_*` hashes that the WebUI
and sd-webui-additional-networks show.
"""
from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path
from typing import Dict, Tuple, Union

import torch

from ..adapters import default_adapter_kinds
from ..errors import LoraFormatError
from ..utils.atomic import atomic_save_safetensors
from ..utils.safetensors_read import read_header


def _data_hashes(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> Tuple[str, str]:
    """kohya's `sshs_model_hash` (sha256 of the bytes after the header) and `sshs_legacy_hash`."""
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_len = struct.unpack("<Q", blob[:8])[0]
    model_hash = hashlib.sha256(blob[8 + header_len:]).hexdigest()
    buf = io.BytesIO(blob)
    buf.seek(0x100000)
    legacy = hashlib.sha256(buf.read(0x10000)).hexdigest()[0:8]
    return model_hash, legacy


def save_kohya_lora(path: Union[str, Path], tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> Path:
    """Write a kohya LoRA atomically; metadata values must be strings (hashes are added here)."""
    metadata = {k: str(v) for k, v in metadata.items()}
    model_hash, legacy = _data_hashes(tensors, metadata)
    metadata["sshs_model_hash"] = model_hash
    metadata["sshs_legacy_hash"] = legacy
    return atomic_save_safetensors(path, tensors, metadata)


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The safetensors header metadata without loading tensors."""
    path = Path(path)
    try:
        header = read_header(path)
    except (OSError, struct.error, ValueError) as exc:
        raise LoraFormatError(f"{path}: not a readable safetensors file ({exc})") from None
    return dict(header.get("__metadata__", {}) or {})


def load_kohya_lora(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Tensors and metadata of a kohya adapter file; refuses a file in which no adapter kind finds a module."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LoraFormatError(f"LoRA file {str(path)!r} does not exist")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise LoraFormatError(f"{path}: cannot read safetensors ({exc})".splitlines()[0]) from None
    kinds = default_adapter_kinds()
    if not any(key.endswith(kind.suffixes[0]) for kind in kinds.kinds() for key in tensors):
        raise LoraFormatError(f"{path}: no kohya adapter keys ({kinds.describe_keys()}) found; first key: "
                              f"{next(iter(tensors), 'none')}")
    return tensors, read_metadata(path)
