"""The Dataset section's work without gradio: scan a folder into the report and the gallery's items."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..config import config_from_dict
from ..data.doctor import DatasetReport, build_report
from ..data.images import ImageError, load_rgb
from ..errors import DatasetError

GALLERY_LIMIT = 120  # thumbnails shown; the report and the caption editor cover every image
THUMB_SIZE = 256


@dataclass
class ScanView:
    """A scanned folder: its report, and every good image with its caption and where that came from."""

    root: Path
    report: DatasetReport
    paths: Dict[str, Path] = field(default_factory=dict)  # rel -> image file
    captions: Dict[str, str] = field(default_factory=dict)  # rel -> caption as written
    sources: Dict[str, str] = field(default_factory=dict)  # rel -> csv | sidecar | folder | trigger | none


def scan_folder(raw: Dict[str, Any]) -> ScanView:
    """Scan the form's dataset folder with the form's data settings (uncaptioned images are reported)."""
    from ..engine.run import build_training_set

    folder = str(raw.get("train_data_dir") or "").strip()
    if not folder:
        raise DatasetError("enter the folder of training images, then press Scan")
    config = config_from_dict({**raw, "train_data_dir": folder}, check_required=False)
    dataset = build_training_set(config, require_captions=False)
    report = build_report(dataset, config.batch_size, config.gradient_accumulation_steps, dataset.scan.broken)
    view = ScanView(root=Path(folder), report=report)
    for r in dataset.scan.records:
        view.paths[r.rel], view.captions[r.rel], view.sources[r.rel] = r.path, r.caption, r.caption_source
    return view


def thumbnail(path: Path, size: int = THUMB_SIZE):
    """A small RGB copy of an image for the gallery (None when it cannot be read)."""
    try:
        img = load_rgb(path)
    except ImageError:
        return None
    img.thumbnail((size, size))
    return img


def gallery_items(view: ScanView, limit: int = GALLERY_LIMIT) -> Tuple[List[Tuple[Any, str]], List[str]]:
    """(thumbnail, "name: caption") pairs for the first `limit` images, and their rel paths in order."""
    items, rels = [], []
    for rel, path in list(view.paths.items())[:limit]:
        img = thumbnail(path)
        if img is not None:
            items.append((img, f"{rel}: {view.captions[rel]}"))
            rels.append(rel)
    return items, rels


SOURCE_TEXT = {"csv": "from the metadata CSV", "sidecar": "from its caption file", "folder": "from the folder name",
               "trigger": "none yet (the trigger word is used)", "none": "none yet"}


def source_text(source: str) -> str:
    return SOURCE_TEXT.get(source, source)
