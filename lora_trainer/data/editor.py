"""Edit captions where they live: a row of the metadata CSV, or the sidecar beside the image.

Where a caption is written follows the reading rules in `captions.py`: an image whose caption comes from
a CSV row gets that row updated; one with a sidecar gets the sidecar rewritten; an image with neither
gets a new CSV row when the folder uses a metadata CSV, else a new `<image-stem><caption_extension>`.
The CSV is rewritten with its own header and extra columns kept. Every write is atomic.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import DatasetError
from ..utils.atomic import atomic_write_text
from .captions import FILE_COLUMNS, TEXT_COLUMNS, apply_trigger, find_sidecar, read_metadata_csv
from .scan import find_images


@dataclass(frozen=True)
class CaptionPlace:
    """Where one image's caption is stored (or would be stored)."""

    kind: str  # "csv" or "sidecar"
    path: Path  # the CSV file or the sidecar file
    key: str = ""  # the CSV row's file name as written there ("" for a sidecar)

    def describe(self, root: Path) -> str:
        where = self.path.name if self.path.parent == root else str(self.path)
        return f"row {self.key!r} of {where}" if self.kind == "csv" else where


def csv_path_for(root: Path, metadata_path: Optional[str]) -> Path:
    """The metadata CSV the folder uses: `metadata_path`, or `<root>/metadata.csv`."""
    return Path(metadata_path) if metadata_path else root / "metadata.csv"


def _csv_key(rows: Dict[str, str], rel: str) -> Optional[str]:
    """The row name that `lookup_csv` would match for `rel` (full relative path first, then bare name)."""
    if rel in rows:
        return rel
    name = rel.rsplit("/", 1)[-1]
    return name if name in rows else None


def caption_place(root: Path, rel: str, metadata_path: Optional[str] = None,
                  caption_extension: str = ".txt") -> CaptionPlace:
    """Where the caption of image `rel` (relative to `root`) is read from, or where a new one goes."""
    csv_path = csv_path_for(root, metadata_path)
    if csv_path.is_file():
        key = _csv_key(read_metadata_csv(csv_path), rel)
        if key is not None:
            return CaptionPlace("csv", csv_path, key)
    image = root / rel
    side = find_sidecar(image, caption_extension)
    if side is not None:
        return CaptionPlace("sidecar", side)
    if csv_path.is_file():
        return CaptionPlace("csv", csv_path, rel)
    return CaptionPlace("sidecar", image.with_suffix(caption_extension))


def read_captions(root: Path, metadata_path: Optional[str] = None,
                  caption_extension: str = ".txt") -> Dict[str, Tuple[str, str]]:
    """rel path -> (caption, source) for every image under `root`, without decoding the images.

    source is csv | sidecar | folder | none (the same precedence as the scan; '' when there is none).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{str(root)!r} is not a folder")
    csv_path = csv_path_for(root, metadata_path)
    rows = read_metadata_csv(csv_path) if csv_path.is_file() else {}
    out: Dict[str, Tuple[str, str]] = {}
    for path, _repeats, class_words, _subset in find_images(root):
        rel = path.relative_to(root).as_posix()
        key = _csv_key(rows, rel)
        if key is not None:
            out[rel] = (rows[key], "csv")
            continue
        side = find_sidecar(path, caption_extension)
        if side is not None:
            out[rel] = (side.read_text(encoding="utf-8", errors="replace").strip(), "sidecar")
        elif class_words:
            out[rel] = (class_words, "folder")
        else:
            out[rel] = ("", "none")
    return out


def update_metadata_csv(path: Path, updates: Dict[str, str]) -> None:
    """Set the caption of the rows named in `updates` (appending rows for new names), keeping the header,
    the other columns and the row order."""
    header: List[str] = ["file_name", "text"]
    rows: List[List[str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8-sig") as fh:
            table = list(csv.reader(fh))
        if table:
            header, rows = table[0], table[1:]
    lower = [h.strip().lower() for h in header]
    file_col = next((lower.index(c) for c in FILE_COLUMNS if c in lower), None)
    text_col = next((lower.index(c) for c in TEXT_COLUMNS if c in lower), None)
    if file_col is None or text_col is None:
        raise DatasetError(f"{path}: the header must name a file column and a caption column; "
                           f"found: {', '.join(header) or 'no header'}")
    pending = dict(updates)
    for row in rows:
        row.extend([""] * (len(header) - len(row)))
        name = row[file_col].strip().replace("\\", "/")
        if name in pending:
            row[text_col] = pending.pop(name)
    for name, text in pending.items():
        row = [""] * len(header)
        row[file_col], row[text_col] = name, text
        rows.append(row)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_captions(root: Path, captions: Dict[str, str], metadata_path: Optional[str] = None,
                  caption_extension: str = ".txt") -> List[CaptionPlace]:
    """Write new captions (rel path -> text) back where each one lives; one write per file."""
    root = Path(root)
    csv_updates: Dict[Path, Dict[str, str]] = {}
    places = []
    for rel, text in captions.items():
        if not (root / rel).is_file():
            raise DatasetError(f"{rel!r} is not an image in {str(root)!r}; scan the folder again")
        place = caption_place(root, rel, metadata_path, caption_extension)
        text = text.strip()
        if place.kind == "csv":
            csv_updates.setdefault(place.path, {})[place.key] = text
        else:
            atomic_write_text(place.path, text + "\n" if text else "")
        places.append(place)
    for path, updates in csv_updates.items():
        update_metadata_csv(path, updates)
    return places


def save_caption(root: Path, rel: str, text: str, metadata_path: Optional[str] = None,
                 caption_extension: str = ".txt") -> CaptionPlace:
    """Write one image's caption back where it lives; returns the place written."""
    return save_captions(root, {rel: text}, metadata_path, caption_extension)[0]


def with_trigger(captions: Dict[str, str], trigger: str) -> Dict[str, str]:
    """The captions that change when `trigger` is put in front (captions that start with it are kept)."""
    trigger = trigger.strip().strip(",").strip()
    if not trigger:
        raise DatasetError("enter the trigger word to add")
    changed = {rel: apply_trigger(text, trigger) for rel, text in captions.items()}
    return {rel: text for rel, text in changed.items() if text != captions[rel]}


def replaced(captions: Dict[str, str], find: str, replace: str) -> Dict[str, str]:
    """The captions that change when every `find` is replaced by `replace` (plain text, case-sensitive)."""
    if not find:
        raise DatasetError("enter the text to find")
    changed = {rel: text.replace(find, replace) for rel, text in captions.items()}
    return {rel: text for rel, text in changed.items() if text != captions[rel]}


def caption_store(root: Path, metadata_path: Optional[str] = None) -> str:
    """How the folder keeps captions: "csv" when it has a metadata CSV or no sidecars yet, else "txt"."""
    root = Path(root)
    if csv_path_for(root, metadata_path).is_file():
        return "csv"
    has_sidecars = any(find_sidecar(path, ".txt") for path, *_ in find_images(root))
    return "txt" if has_sidecars else "csv"
