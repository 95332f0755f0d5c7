"""A labelled image grid: rows = LoRA checkpoints, columns = weights (`python -m lora_trainer grid`).

Every cell is rendered with the same prompt and seed, so the grid shows how each checkpoint looks at
each strength: the quick way to pick the epoch and the `<lora:name:weight>` that look right.
"""
from __future__ import annotations

import glob
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from .errors import LoraTrainerError

LABEL_HEIGHT = 28
LABEL_WIDTH = 190
STEP_NAME = re.compile(r"-step\d{8}")  # what follows a LoRA's name in its checkpoints' names


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
    from .adapters import default_adapter_kinds
    from .engine.sampling import SamplePrompt
    from .formats.kohya import load_kohya_lora
    from .network.network import AdapterNetwork

    sample = SamplePrompt(prompt, negative=negative, width=size, height=size, steps=steps, cfg=cfg, seed=seed)
    rows = []
    for path in loras:
        tensors, metadata = load_kohya_lora(path)
        adapter = default_adapter_kinds().file_spec(tensors, str(path), metadata=metadata)
        te = any(k.startswith("lora_te") for k in tensors)
        network = AdapterNetwork.inject(bundle.network_components(te), adapter)
        try:
            network.load_kohya_state_dict(tensors)
            network.train(False)
            row = []
            for weight in weights:
                network.set_multiplier(weight)
                row.append(bundle.sample([sample])[0])
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


def run_settings(folder: Path) -> Dict[str, Any]:
    """The training config recorded in a run folder's config.yaml, relative paths resolved ({} if none)."""
    import yaml

    from .config import resolve_paths

    cfg = Path(folder) / "config.yaml"
    if not cfg.is_file():
        return {}
    try:
        raw = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LoraTrainerError(f"{cfg} cannot be read: {exc}".splitlines()[0]) from None
    return resolve_paths(raw, Path(folder)) if isinstance(raw, dict) else {}


def base_model_of(lora_folder: Path) -> Optional[str]:
    """The base_model recorded in a training output folder's config.yaml, if any."""
    return run_settings(lora_folder).get("base_model")


def run_checkpoints(lora: Path) -> List[Path]:
    """A trained LoRA's run: its `<name>-stepNNNNNNNN` checkpoints beside it in step order, then the LoRA."""
    lora = Path(lora)
    steps = sorted(p for p in lora.parent.glob(f"{glob.escape(lora.stem)}-step*.safetensors")
                   if STEP_NAME.fullmatch(p.stem[len(lora.stem):]))
    return steps + [lora]


def parse_weights(text: str) -> List[float]:
    """`0.4,0.6,0.8,1.0` -> [0.4, 0.6, 0.8, 1.0]."""
    try:
        weights = [float(w) for w in str(text).split(",") if w.strip()]
    except ValueError:
        raise LoraTrainerError(f"weights {text!r}: expected numbers separated by commas, e.g. 0.4,0.6,0.8,1.0") \
            from None
    if not weights:
        raise LoraTrainerError("weights: give at least one weight, e.g. 0.4,0.6,0.8,1.0")
    return weights


def check_grid_request(loras: Sequence[Any], prompt: str, weights: Sequence[float]) -> None:
    """Refuse a grid without rows, columns or prompt before any model is loaded."""
    if not loras:
        raise LoraTrainerError("grid: no LoRA files given")
    if not weights:
        raise LoraTrainerError("grid: give at least one weight, e.g. 0.4,0.6,0.8,1.0")
    if not str(prompt or "").strip():
        raise LoraTrainerError("grid: enter a prompt for the grid's images")


def new_grid_path(folder: Path) -> Path:
    """`folder/grid-YYYYmmdd-HHMMSS.png` (with -1, -2 ... when that exists)."""
    stem = time.strftime("grid-%Y%m%d-%H%M%S")
    path, n = Path(folder) / f"{stem}.png", 0
    while path.exists():
        n += 1
        path = Path(folder) / f"{stem}-{n}.png"
    return path


def load_grid_bundle(base: str, tokenizer_path: Optional[str] = None, base_model_config: Optional[str] = None,
                     device: str = "auto", clip_skip: int = 1, prediction_type: str = "auto"):
    """The base model, frozen on `device` in the device's inference dtype, ready for `render_grid`."""
    from .models import default_families
    from .models.loading import load_bundle
    from .utils.device import pick_device, pick_precision

    bundle = load_bundle(base, default_families(), tokenizer_path, base_model_config, clip_skip, prediction_type)
    target = pick_device(device)
    bundle.prepare(target, pick_precision("auto", target).base_dtype, False, False)
    return bundle


def grid_to_file(loras: Sequence[Path], prompt: str, weights: Sequence[float], out: Optional[Path] = None,
                 base: Optional[str] = None, tokenizer_path: Optional[str] = None, device: str = "auto",
                 **render: Any) -> Tuple[Path, GridResult]:
    """Render and save the grid of `loras` x `weights` (the `grid` command and the page's standalone Grid).

    Without `base`, the base model (with its tokenizer_path, base_model_config, clip_skip and
    prediction_type) is the one recorded in the run's config.yaml beside the first LoRA. `out` defaults to
    `grid.png` beside the LoRAs; `render` goes to `render_grid` (seed, size, steps, cfg, negative)."""
    check_grid_request(loras, prompt, weights)
    folder = Path(loras[0]).parent
    settings = run_settings(folder)
    # the run's own model settings go with the run's own base model
    model = {} if base else dict(base_model_config=settings.get("base_model_config"),
                                 prediction_type=settings.get("prediction_type") or "auto")
    base = base or settings.get("base_model")
    if not base:
        raise LoraTrainerError(f"grid: no config.yaml with base_model in {folder}: give the base model the LoRAs "
                               f"were trained on (CLI: --base MODEL)")
    bundle = load_grid_bundle(base, tokenizer_path or settings.get("tokenizer_path"), device=device,
                              clip_skip=int(settings.get("clip_skip") or 1), **model)
    result = render_grid(bundle, [Path(p) for p in loras], prompt, weights, **render)
    out = Path(out) if out else folder / "grid.png"
    return save_grid(result, out), result
