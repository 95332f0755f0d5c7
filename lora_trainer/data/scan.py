"""Scan a training folder: find images, decode each once, attach captions and repeats.

Folder conventions (all at once):
- images directly in `train_data_dir` (or in plain subfolders) are used once per epoch;
- a kohya-style subfolder `N_name` (e.g. `10_sks dog`) repeats its images N times per epoch, and
  `name` is the caption of an image in it that has no caption of its own;
- hidden folders and the trainer's cache folder are skipped.
Broken images are not fatal: they are listed in `ScanResult.broken` and left out.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import DatasetError
from .captions import lookup_csv, read_metadata_csv, sidecar_caption
from .images import IMAGE_EXTENSIONS, ImageError, is_image_file, load_rgb

CACHE_DIR_NAME = ".lora_trainer_cache"
KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass
class ImageRecord:
    """One good training image."""

    path: Path
    rel: str  # path relative to the training folder, '/'-separated
    width: int  # after EXIF rotation
    height: int
    caption: str  # as written by the user (the trigger word is added when the caption is used)
    caption_source: str  # csv | sidecar | folder | trigger | none
    repeats: int
    subset: str  # the top-level subfolder ('' for the folder itself)
    sha256: str
    dhash: int
    thumb: Tuple[int, ...] = ()  # 4x4 RGB thumbnail, to tell near duplicates from same-shape images


@dataclass
class ScanResult:
    root: Path
    records: List[ImageRecord] = field(default_factory=list)
    broken: List[Tuple[Path, str]] = field(default_factory=list)
    metadata_path: Optional[Path] = None
    missing_files: List[str] = field(default_factory=list)  # metadata CSV rows naming no image of the folder

    @property
    def num_images(self) -> int:
        return len(self.records)


def _dhash(img) -> int:
    """64-bit difference hash of a grey 9x8 thumbnail (near-duplicate detection)."""
    px = np.asarray(img.convert("L").resize((9, 8)), dtype=np.int16)
    bits = 0
    for flag in (px[:, :-1] > px[:, 1:]).reshape(-1):
        bits = (bits << 1) | int(flag)
    return bits


def find_images(root: Path) -> List[Tuple[Path, int, str, str]]:
    """(path, repeats, class words, subset) for every image file under root, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != CACHE_DIR_NAME)
        rel_dir = Path(dirpath).relative_to(root)
        top = rel_dir.parts[0] if rel_dir.parts else ""
        match = KOHYA_FOLDER.match(top) if top else None
        repeats = int(match.group(1)) if match else 1
        class_words = match.group(2).strip() if match else ""
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_image_file(path):
                found.append((path, max(repeats, 0), class_words, top))
    return found


def _inspect(path: Path):
    try:
        img = load_rgb(path)
    except ImageError as exc:
        return None, exc.reason
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    thumb = tuple(int(v) for v in np.asarray(img.resize((4, 4))).reshape(-1))
    return (img.width, img.height, digest, _dhash(img), thumb), None


def require_images(root: Path, what: str = "train_data_dir") -> List[Tuple[Path, int, str, str]]:
    """`find_images(root)`, refusing a folder that is missing, not a folder, or holds no image file."""
    if not root.exists():
        raise DatasetError(f"{what} {str(root)!r} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{what} {str(root)!r} is not a folder")
    files = find_images(root)
    if not files:
        raise DatasetError(f"{what} {str(root)!r} contains no images ({' '.join(IMAGE_EXTENSIONS)})")
    return files


def scan_dataset(train_data_dir: str, metadata_path: Optional[str] = None, caption_extension: str = ".txt",
                 trigger_word: Optional[str] = None, require_captions: bool = True,
                 workers: int = 4) -> ScanResult:
    """Scan `train_data_dir` into good records (+ broken files). Raises DatasetError when unusable."""
    root = Path(train_data_dir)
    files = require_images(root)
    csv_path = Path(metadata_path) if metadata_path else root / "metadata.csv"
    if metadata_path and not csv_path.is_file():
        raise DatasetError(f"metadata_path {str(csv_path)!r} does not exist")
    csv_captions = read_metadata_csv(csv_path) if csv_path.is_file() else {}

    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # Pillow's own warnings (a huge image, odd palettes, EXIF) would print its site-packages path; the
        # images it warns about get their reason from load_rgb instead
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        inspected = list(pool.map(lambda f: _inspect(f[0]), files))

    result = ScanResult(root=root, metadata_path=csv_path if csv_captions else None)
    if csv_captions:
        result.missing_files = missing_rows(csv_captions, [f[0].relative_to(root).as_posix() for f in files],
                                            csv_path.name)
    uncaptioned = []
    for (path, repeats, class_words, subset), (info, error) in zip(files, inspected):
        if info is None:
            result.broken.append((path, error or "unreadable"))
            continue
        rel = path.relative_to(root).as_posix()
        caption, source = lookup_csv(csv_captions, rel), "csv"
        if caption is None:
            caption, source = sidecar_caption(path, caption_extension), "sidecar"
        if caption is None and class_words:
            caption, source = class_words, "folder"
        if caption is None:
            caption, source = "", "trigger" if trigger_word else "none"
            if not trigger_word:
                uncaptioned.append(rel)
        width, height, digest, dh, thumb = info
        result.records.append(ImageRecord(
            path=path, rel=rel, width=width, height=height, caption=caption,
            caption_source=source, repeats=repeats, subset=subset, sha256=digest, dhash=dh, thumb=thumb))
    if not result.records:
        raise DatasetError(f"train_data_dir {str(root)!r}: none of the {len(files)} image files can be opened "
                           f"(first: {result.broken[0][0].name}: {result.broken[0][1]})")
    if require_captions and uncaptioned:
        shown = ", ".join(uncaptioned[:5]) + (f" and {len(uncaptioned) - 5} more" if len(uncaptioned) > 5 else "")
        raise DatasetError(
            f"{len(uncaptioned)} image(s) have no caption: {shown}. Add a row to metadata.csv, a "
            f"{caption_extension} file beside the image, put it in an `N_name` folder, or set trigger_word")
    return result


def missing_rows(csv_captions: Dict[str, str], rels: List[str], csv_name: str) -> List[str]:
    """Rows of the metadata CSV that name no image file found in the folder (by path or bare name)."""
    found = set(rels) | {rel.rsplit("/", 1)[-1] for rel in rels}
    return [f"{csv_name} names {name}, which is not an image in the folder" for name in csv_captions
            if name not in found]

