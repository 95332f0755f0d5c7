"""Opening user images robustly: EXIF rotation, alpha on white, odd modes to 8-bit RGB.

A file that cannot be a training image raises ImageError with the reason, before it is decoded where
possible: not an image, an animated image (GIF, APNG, animated WebP, multi-page TIFF), an image over
MAX_PIXELS (64 megapixels, e.g. 8000x8000; training never uses more than a few megapixels, and decoding
such a file takes hundreds of MB), a decompression bomb (a small file whose header claims a huge image),
or AVIF/HEIC without the Pillow plugin that reads them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif")
MAX_PIXELS = 64_000_000
PLUGINS = {".avif": "Pillow 11.3 or newer, or the pillow-avif-plugin package", ".heic": "the pillow-heif package",
           ".heif": "the pillow-heif package"}


class ImageError(Exception):
    """An image file that cannot be used; `str()` names the file and the reason."""

    def __init__(self, path: Union[str, Path], reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
        mode = "L"
    if mode == "F":
        arr = np.clip(np.asarray(img) * (255.0 if np.asarray(img).max() <= 1.0 else 1.0), 0, 255)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def header_problem(img: Image.Image) -> Optional[str]:
    """Why an opened (not yet decoded) image cannot be trained on, or None."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        return f"animated or multi-page ({frames} frames): save the frame to train on as a PNG"
    pixels = img.width * img.height
    if pixels > MAX_PIXELS:
        return (f"{img.width}x{img.height} is {pixels / 1e6:.0f} megapixels, over the limit of "
                f"{MAX_PIXELS / 1e6:.0f}: resize it first")
    return None


def _unreadable(path: Path) -> str:
    plugin = PLUGINS.get(path.suffix.lower())
    if plugin:
        return f"this Pillow cannot read {path.suffix.lower()[1:].upper()} images: install {plugin}, or save it as PNG"
    return "not an image (unrecognised file contents)"


def load_rgb(path: Union[str, Path]) -> Image.Image:
    """Open an image as 8-bit RGB with EXIF rotation applied; raise ImageError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            problem = header_problem(img)
            if problem:
                raise ImageError(path, problem)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, _unreadable(path)) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"refused as a decompression bomb: {exc}".split(" could be")[0]) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(path, f"cannot be decoded ({exc})") from None


def image_size(path: Union[str, Path]) -> Tuple[int, int]:
    """(width, height) as the image will be trained, i.e. after EXIF rotation; decodes the file fully
    so that truncated files are caught here rather than mid-training."""
    img = load_rgb(path)
    return img.size
