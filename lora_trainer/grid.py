"""A labelled image grid: rows = LoRA checkpoints, columns = weights (`python -m lora_trainer grid`).

Every cell is rendered with the same prompt and seed, so the grid shows how each checkpoint looks at
each strength: the quick way to pick the epoch and the `<lora:name:weight>` that look right.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from .errors import LoraTrainerError

LABEL_HEIGHT = 28
LABEL_WIDTH = 190


@dataclass
class GridResult:
    image: Image.Image
    rows: List[str]
    columns: List[str]
    cell_size: tuple


def find_loras(paths: Sequence[str]) -> List[Path]:
    """LoRA files from files and folders (a folder gives its checkpoints in step order, final last)."""
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            out += [f for f in files if "-step" in f.stem] + [f for f in files if "-step" not in f.stem]
        elif p.is_file():
            out.append(p)
        else:
            raise LoraTrainerError(f"--loras: {str(p)!r} is neither a LoRA file nor a folder")
    if not out:
        raise LoraTrainerError("--loras: no .safetensors files found")
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()


def assemble_grid(cells: Sequence[Sequence[Image.Image]], row_labels: Sequence[str],
                  column_labels: Sequence[str]) -> Image.Image:
    """Paste equal-size cells into a grid with a label column on the left and a label row on top."""
    w, h = cells[0][0].size
    grid = Image.new("RGB", (LABEL_WIDTH + w * len(column_labels), LABEL_HEIGHT + h * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(16)
    for c, label in enumerate(column_labels):
        draw.text((LABEL_WIDTH + c * w + 6, 6), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        draw.text((6, LABEL_HEIGHT + r * h + h // 2 - 8), label[:24], fill="black", font=font)
        for c, cell in enumerate(cells[r]):
            grid.paste(cell, (LABEL_WIDTH + c * w, LABEL_HEIGHT + r * h))
    return grid


def render_grid(bundle, loras: Sequence[Path], prompt: str, weights: Sequence[float], seed: int = 0,
                size: int = 512, steps: int = 20, cfg: float = 7.0, negative: str = "") -> GridResult:
    """Render every (LoRA, weight) pair with `bundle.sample` and assemble the grid."""
    from .engine.sampling import SamplePrompt
    from .formats.kohya import load_kohya_lora, rank_and_alpha
    from .lora.network import LoraNetwork

    spec = SamplePrompt(prompt, negative=negative, width=size, height=size, steps=steps, cfg=cfg, seed=seed)
    rows = []
    for path in loras:
        tensors, _ = load_kohya_lora(path)
        rank, alpha = rank_and_alpha(tensors)
        te = any(k.startswith("lora_te") for k in tensors)
        network = LoraNetwork.inject(bundle.lora_components(te), rank, alpha)
        try:
            network.load_kohya_state_dict(tensors)
            network.train(False)
            row = []
            for weight in weights:
                network.set_multiplier(weight)
                row.append(bundle.sample([spec])[0])
            rows.append(row)
        finally:
            network.remove()
    columns = [f"weight {w:g}" for w in weights]
    names = [p.stem for p in loras]
    image = assemble_grid(rows, names, columns)
    image.info["lora_trainer_grid"] = f"rows={','.join(names)}; columns={','.join(columns)}; prompt={prompt}"
    return GridResult(image, names, columns, (size, size))


def save_grid(result: GridResult, out: Path) -> Path:
    from PIL import PngImagePlugin

    from .utils.atomic import atomic_write_with

    info = PngImagePlugin.PngInfo()
    info.add_text("lora_trainer_grid", result.image.info.get("lora_trainer_grid", ""))
    return atomic_write_with(out, lambda tmp: result.image.save(tmp, format="PNG", pnginfo=info))


def base_model_of(lora_folder: Path) -> Optional[str]:
    """The base_model recorded in a training output folder's config.yaml, if any."""
    import yaml

    cfg = lora_folder / "config.yaml"
    if cfg.is_file():
        return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("base_model")
    return None
