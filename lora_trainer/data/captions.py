"""Where captions come from, in this order of precedence (first hit wins):

1. a row in the metadata CSV (`metadata_path`, or `metadata.csv` in the training folder),
   columns `file_name` and `text` (aliases: filename/file/image and prompt/caption);
2. a sidecar next to the image with `caption_extension` (default `.txt`);
3. a sidecar with the other common extension (`.caption` or `.txt`);
4. the class words of a kohya `N_name` folder the image is in.

Then `trigger_word` is put in front. A caption may be empty (a warning); an image with none of the
four sources and no trigger word is an error before training.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Dict, Optional

from ..errors import DatasetError

FILE_COLUMNS = ("file_name", "filename", "file", "image", "image_path", "path")
TEXT_COLUMNS = ("text", "caption", "prompt", "captions", "tags")


def read_metadata_csv(path: Path) -> Dict[str, str]:
    """Map from the CSV's file names (as written, '/'-separated) to captions."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            lower = {h.lower(): h for h in header}
            file_col = next((lower[c] for c in FILE_COLUMNS if c in lower), None)
            text_col = next((lower[c] for c in TEXT_COLUMNS if c in lower), None)
            if file_col is None or text_col is None:
                raise DatasetError(
                    f"{path}: the header must name a file column ({'/'.join(FILE_COLUMNS[:3])}) and a caption "
                    f"column ({'/'.join(TEXT_COLUMNS[:3])}); found: {', '.join(header) or 'no header'}")
            out: Dict[str, str] = {}
            for row in reader:
                row = {(k or "").strip(): v for k, v in row.items()}
                name = (row.get(file_col) or "").strip().replace("\\", "/")
                if name:
                    out[name] = (row.get(text_col) or "").strip()
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read metadata CSV ({exc})") from None


def write_metadata_csv(path: Path, captions: Dict[str, str]) -> None:
    """Write `file_name,text` rows atomically (used by the caption editor and the captioner)."""
    import io

    from ..utils.atomic import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file_name", "text"])
    for name, text in captions.items():
        writer.writerow([name, text])
    atomic_write_text(path, buf.getvalue())


def find_sidecar(image: Path, caption_extension: str) -> Optional[Path]:
    """The caption sidecar an image has: `<image-stem><ext>`, configured extension first, then .txt/.caption."""
    seen = []
    for ext in (caption_extension, ".txt", ".caption"):
        if ext in seen:
            continue
        seen.append(ext)
        side = image.with_suffix(ext)
        if side.is_file():
            return side
    return None


def sidecar_caption(image: Path, caption_extension: str) -> Optional[str]:
    """Caption from the image's sidecar (see `find_sidecar`), or None when it has none."""
    side = find_sidecar(image, caption_extension)
    return side.read_text(encoding="utf-8", errors="replace").strip() if side else None


def lookup_csv(captions: Dict[str, str], rel: str) -> Optional[str]:
    """Find an image's row by its path relative to the training folder, or by its bare name."""
    if rel in captions:
        return captions[rel]
    name = rel.rsplit("/", 1)[-1]
    return captions.get(name)


def apply_trigger(caption: str, trigger_word: Optional[str]) -> str:
    """Put the trigger word in front, once (not added again if the caption already starts with it)."""
    if not trigger_word:
        return caption
    trigger = trigger_word.strip()
    if caption == trigger or caption.startswith(trigger + ",") or caption.startswith(trigger + " "):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def shuffle_tags(caption: str, rng: random.Random, keep_tokens: int = 0) -> str:
    """Shuffle comma-separated tags, keeping the first `keep_tokens` in place."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(tail)
    return ", ".join(head + tail)
