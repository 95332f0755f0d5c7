"""Putting a trained LoRA (and its card sidecars) into the WebUI's Lora folder without overwriting."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, List, Optional

from ..formats.sidecar import sidecars_of
from ..utils.atomic import atomic_write_with


def free_name(folder: Path, stem: str, overwrite: bool) -> str:
    """`stem`, or `stem-1`, `stem-2`... when a LoRA of that name exists and overwriting is off."""
    if overwrite or not (folder / f"{stem}.safetensors").exists():
        return stem
    n = 1
    while (folder / f"{stem}-{n}.safetensors").exists():
        n += 1
    return f"{stem}-{n}"


def _files_of(lora: Path) -> List[Path]:
    return [lora, *sidecars_of(lora)]


def install_lora(lora: Path, folder: Path, overwrite: bool = False, name: Optional[str] = None,
                 also: Iterable[Path] = ()) -> Path:
    """Copy `<stem>.safetensors` (+ .json, .preview.png) into `folder` (and `also` folders); returns the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = free_name(folder, name or lora.stem, overwrite)
    for src in _files_of(lora):
        suffix = src.name[len(lora.stem):]
        for dest_dir in [folder, *also]:
            dest_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_with(dest_dir / f"{stem}{suffix}", lambda tmp, s=src: shutil.copyfile(s, tmp))
    return folder / f"{stem}.safetensors"
