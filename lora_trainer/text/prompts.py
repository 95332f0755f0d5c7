"""Collect a WebUI user's own prompts: the generation info the WebUI writes into its images (a PNG
`parameters` text chunk; EXIF UserComment for .jpg/.webp), the `prompt` column of a `styles.csv`, or a
pasted list (one prompt per line). Only the positive prompt is kept; duplicates are dropped in order.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from ..errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MAX_IMAGES = 5000  # the newest images of the folders; enough for a style, quick to read
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # "Steps: 20," pairs of the last line
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def prompt_from_parameters(text: str) -> str:
    """The positive prompt of a WebUI generation-info text (prompt lines, `Negative prompt: ...`, then a line
    of `Key: value` settings)."""
    *lines, last = text.strip().split("\n")
    if len(PARAM.findall(last)) < 3:  # not a settings line: part of the prompt
        lines.append(last)
    prompt = []
    for line in lines:
        if line.strip().startswith("Negative prompt:"):
            break
        prompt.append(line.strip())
    return clean_prompt(" ".join(prompt))


def clean_prompt(text: str) -> str:
    """One line, single spaces, no leading or trailing commas."""
    return re.sub(r"\s+", " ", text).strip().strip(",").strip()


def _exif_comment(image) -> Optional[str]:
    raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(raw, bytes):
        if raw.startswith(b"UNICODE\0"):
            return raw[8:].decode("utf-16-be", errors="ignore")
        if raw.startswith(b"ASCII\0\0\0"):
            return raw[8:].decode("ascii", errors="ignore")
        return raw.decode("utf-8", errors="ignore")
    return raw if isinstance(raw, str) else None


def image_parameters(path: Path) -> Optional[str]:
    """The WebUI's generation info stored in an image, or None."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get("parameters")
        if text is None and path.suffix.lower() != ".png":
            text = _exif_comment(image)
    return text if isinstance(text, str) and text.strip() else None


def newest_images(folders: Sequence[Path], limit: int = MAX_IMAGES) -> List[Path]:
    found = [p for folder in folders for p in Path(folder).rglob("*")
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]


def prompts_from_images(folders: Sequence[Path]) -> Tuple[List[str], int]:
    """(prompts of the images' generation info, newest first; how many images had none or could not be read)."""
    prompts, without = [], 0
    for path in newest_images(folders):
        try:
            text = image_parameters(path)
        except Exception:  # noqa: BLE001 - a broken image is counted, not fatal
            text = None
        prompt = prompt_from_parameters(text) if text else ""
        if prompt:
            prompts.append(prompt)
        else:
            without += 1
    return prompts, without


def prompts_from_styles(path: Path) -> List[str]:
    """The `prompt` column of a WebUI styles.csv, with the `{prompt}` placeholder taken out."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"styles file {str(path)!r} cannot be read ({exc})") from None
    if rows and "prompt" not in rows[0]:
        raise DatasetError(f"styles file {str(path)!r} has no 'prompt' column (columns: {', '.join(rows[0])})")
    return [p for p in (clean_prompt((row.get("prompt") or "").replace("{prompt}", "")) for row in rows) if p]


def prompts_from_text(text: str) -> List[str]:
    return [p for p in (clean_prompt(line) for line in (text or "").splitlines()) if p]


@dataclass
class CollectedPrompts:
    prompts: List[str] = field(default_factory=list)
    from_images: int = 0
    from_styles: int = 0
    pasted: int = 0
    images_without_info: int = 0

    def summary(self) -> str:
        text = (f"{len(self.prompts)} distinct prompt(s): {self.from_images} from images, {self.from_styles} from "
                f"styles, {self.pasted} pasted")
        if self.images_without_info:
            text += f"; {self.images_without_info} image(s) had no generation info"
        return text


def _unique(items: Iterable[str]) -> List[str]:
    seen, out = set(), []
    for item in items:
        if item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


def collect_prompts(folders: Sequence[str] = (), styles: Sequence[str] = (), pasted: str = "") -> CollectedPrompts:
    """Every source at once; a folder or file that does not exist is an error naming it."""
    for path in [*folders, *styles]:
        if not Path(path).exists():
            raise DatasetError(f"{path!r} does not exist: give an image folder (e.g. outputs/txt2img-images), a "
                               f"styles.csv, or paste prompts")
    images, without = prompts_from_images([Path(f) for f in folders]) if folders else ([], 0)
    style_prompts = [p for s in styles for p in prompts_from_styles(Path(s))]
    typed = prompts_from_text(pasted)
    return CollectedPrompts(_unique(typed + images + style_prompts), len(images), len(style_prompts), len(typed),
                            without)
