"""Small generated image sets for the tests."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

from lora_trainer.data.captions import write_metadata_csv
from lora_trainer.tiny import COLOURS


def make_color_dataset(folder: Path, n: int = 4, size: Tuple[int, int] = (64, 64), captions: str = "csv",
                       colours: Optional[Sequence[Tuple[str, Tuple[int, int, int]]]] = None) -> Path:
    """Solid-colour images `0_red.png`... with captions ('a red image') in metadata.csv or .txt sidecars."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for i, (name, rgb) in enumerate(list(colours or COLOURS)[:n]):
        file = f"{i}_{name}.png"
        Image.new("RGB", size, rgb).save(folder / file)
        rows[file] = f"a {name} image"
        if captions == "txt":
            (folder / file).with_suffix(".txt").write_text(rows[file], encoding="utf-8")
    if captions == "csv":
        write_metadata_csv(folder / "metadata.csv", rows)
    return folder
