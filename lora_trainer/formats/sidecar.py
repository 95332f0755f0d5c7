"""The WebUI's LoRA card sidecars: `<name>.json` and `<name>.preview.png`."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import List, Optional

from ..utils.atomic import atomic_write_bytes, atomic_write_text, atomic_write_with

SIDECAR_SUFFIXES = (".json", ".preview.png")


def write_sidecar(lora_path: Path, *, sd_version: str, activation_text: str = "", preferred_weight: float = 0.8,
                  description: str = "") -> Path:
    """`<name>.json` with the keys the WebUI's Extra Networks card reads."""
    data = {
        "description": description,
        "sd version": sd_version,
        "activation text": activation_text,
        "preferred weight": preferred_weight,
        "negative text": "",
        "notes": "",
    }
    return atomic_write_text(lora_path.with_suffix(".json"), json.dumps(data, indent=4) + "\n")


def write_preview(lora_path: Path, image) -> Optional[Path]:
    """`<name>.preview.png` from a PIL image (the card's thumbnail)."""
    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(lora_path.parent / f"{lora_path.stem}.preview.png", buf.getvalue())


def sidecars_of(lora_path: Path) -> List[Path]:
    """The card sidecars that exist beside a LoRA file."""
    lora_path = Path(lora_path)
    return [side for side in (lora_path.with_name(lora_path.stem + suffix) for suffix in SIDECAR_SUFFIXES)
            if side.is_file()]


def copy_sidecars(source: Path, target: Path) -> List[Path]:
    """Give the LoRA file `target` copies of `source`'s card sidecars; returns the files written."""
    source, target = Path(source), Path(target)
    written = []
    for side in sidecars_of(source):
        dest = target.with_name(target.stem + side.name[len(source.stem):])
        written.append(atomic_write_with(dest, lambda tmp, s=side: shutil.copyfile(s, tmp)))
    return written
