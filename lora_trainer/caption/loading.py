"""Finding caption models offline, and giving their memory back.

`--model` is a local folder (loaded with local_files_only=True). A hub id is used only when it is in
the local Hugging Face cache, or when the hub can be reached (and HF_HUB_OFFLINE is not set).
"""
from __future__ import annotations

import gc
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_folder(source: str, what: str) -> Path:
    """The local folder holding model `source` (a folder, or a hub id in the cache / downloadable).

    `what` names the model in errors ("BLIP model"). Raises ModelLoadError with a one-line fix.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{what} folder {str(path)!r} has no config.json: pass a folder saved with "
                                 f"save_pretrained (config.json, weights, tokenizer and preprocessor files)")
        return path
    if path.exists():
        raise ModelLoadError(f"{what} {str(path)!r} is a file: pass the model's folder")
    if not HUB_ID.match(source):
        raise ModelLoadError(f"{what} folder {source!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        snapshot_download = None
    if snapshot_download is not None:
        try:
            return Path(snapshot_download(source, local_files_only=True))
        except Exception:  # noqa: BLE001 - not (completely) in the cache: try the hub below
            pass
        if not _hub_offline():
            try:
                return Path(snapshot_download(source, allow_patterns=WEIGHT_PATTERNS))
            except Exception:  # noqa: BLE001 - unreachable, unknown id, gated...: one message for all
                pass
    raise ModelLoadError(f"{what} {source!r} is not a local folder, not in the Hugging Face cache, and cannot "
                         f"be downloaded here: pass --model with a local folder (from save_pretrained)")


def load_pretrained(cls: Any, folder: Path, what: str) -> Any:
    """`cls.from_pretrained(folder, local_files_only=True)` with a one-line error on failure."""
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - wrong kind of model, missing files...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{what} in {str(folder)!r} cannot be loaded as {cls.__name__}: {first}") from None


def model_dtype(device: str) -> torch.dtype:
    """fp16 on CUDA (halves memory, captions are the same), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def features(output: Any) -> torch.Tensor:
    """Projected CLIP features: a tensor in transformers 4.x, `.pooler_output` of an output object in 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def release_memory(device: str) -> None:
    """Collect garbage and, on CUDA, hand cached blocks back to the driver."""
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
