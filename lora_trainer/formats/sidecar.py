"""The WebUI's LoRA card sidecars: `<name>.json` and `<name>.preview.png`."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

from ..utils.atomic import atomic_write_bytes, atomic_write_text


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
