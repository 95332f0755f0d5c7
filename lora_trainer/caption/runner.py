"""Caption every image of a folder with one backend: the function the CLI and the UI call.

Order of work: check the arguments, the output (writable) and the images (which need a caption), then
load the model (only if there is something to caption, and only once), caption in batches, write after
every batch (so a stopped run resumes where it stopped), and free the model whatever happens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..data.images import ImageError, load_rgb
from ..data.scan import find_images
from ..errors import CaptionError
from ..utils.device import pick_device
from .registry import default_captioners
from .base import CaptionerRegistry, CaptionOptions
from .loading import release_memory
from .outputs import TARGETS


@dataclass
class CaptionProgress:
    """Sent to the progress callback: before the first image, while loading, and after every image."""

    done: int  # images handled so far (captioned or skipped as broken)
    total: int  # images this run will handle (those already captioned are not counted)
    file: str = ""  # the image just handled, relative to the folder
    caption: Optional[str] = None  # its new caption (None while loading, or when it failed)
    error: Optional[str] = None  # why the image was skipped
    message: str = ""  # a status line ("loading blip")


@dataclass
class CaptionResult:
    output: Path  # the CSV written, or the image folder for .txt sidecars
    captions: Dict[str, str] = field(default_factory=dict)  # new captions by path relative to the folder
    skipped: int = 0  # images that already had a caption
    broken: List[Tuple[Path, str]] = field(default_factory=list)  # images that could not be captioned, and why
    stopped: bool = False  # should_stop() asked for an early end
    notes: List[str] = field(default_factory=list)  # things to tell the user

    @property
    def captioned(self) -> int:
        return len(self.captions)


def apply_prefix(prefix: str, caption: str) -> str:
    """Put `prefix` in front once: ("sks, ", "a dog") -> "sks, a dog"; a caption already starting with it is kept.

    A space is added when the prefix does not end with one; an empty caption becomes the bare prefix.
    """
    prefix = prefix.lstrip()
    core = prefix.strip().rstrip(",").strip()
    if not core:
        return caption
    if caption == core or caption.startswith(core + ",") or caption.startswith(core + " "):
        return caption
    if not caption:
        return core
    return prefix + ("" if prefix[-1].isspace() else " ") + caption


def caption_folder(input_dir: str, output: Optional[str] = None, fmt: str = "csv", backend: str = "blip",
                   model: Optional[str] = None, prefix: str = "", overwrite: bool = False, batch_size: int = 4,
                   device: str = "auto", progress: Optional[Callable[[CaptionProgress], None]] = None, *,
                   clip_model: Optional[str] = None, max_new_tokens: int = 40, num_beams: int = 3,
                   tag_threshold: float = 0.2, should_stop: Optional[Callable[[], bool]] = None,
                   backends: Optional[CaptionerRegistry] = None) -> CaptionResult:
    """Caption the images under `input_dir` (subfolders included) into a CSV (`fmt="csv"`, `output` defaults
    to `<input_dir>/metadata.csv`) or `<image>.txt` sidecars (`fmt="txt"`).

    Images that already have a caption are skipped unless `overwrite`. Broken images are listed in the
    result, not fatal. `progress` gets a CaptionProgress per image; `should_stop()` is asked between
    batches. Raises CaptionError / ModelLoadError (one line) when the run cannot start.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise CaptionError(f"--input {str(root)!r} is not a folder of images")
    if fmt not in TARGETS:
        raise CaptionError(f"unknown caption format {fmt!r}; use one of: {', '.join(TARGETS)}")
    if batch_size < 1:
        raise CaptionError(f"--batch-size must be at least 1 (got {batch_size})")
    spec = (backends or default_captioners()).get(backend)
    options = CaptionOptions(model=model, clip_model=clip_model, device=str(pick_device(device)),
                             max_new_tokens=max_new_tokens, num_beams=num_beams, tag_threshold=tag_threshold)
    target = TARGETS[fmt](root, output, overwrite)  # checks that the output can be written

    files = [path for path, *_ in find_images(root)]
    if not files:
        raise CaptionError(f"--input {str(root)!r} contains no images (.png .jpg .jpeg .webp .bmp)")
    result = CaptionResult(output=target.location)
    todo: List[Tuple[str, Path]] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if not overwrite and target.existing(rel, path):
            result.skipped += 1
        else:
            todo.append((rel, path))
    target.check_images_writable([path for _, path in todo])

    report = progress or (lambda event: None)
    total, done = len(todo), 0
    report(CaptionProgress(0, total, message=f"{total} image(s) to caption, {result.skipped} already captioned"))
    captioner = None
    try:
        for start in range(0, total, batch_size):
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            batch = []
            for rel, path in todo[start:start + batch_size]:
                try:
                    batch.append((rel, path, load_rgb(path)))
                except ImageError as exc:
                    done += 1
                    result.broken.append((path, exc.reason))
                    report(CaptionProgress(done, total, rel, error=exc.reason))
            if not batch:
                continue
            if captioner is None:
                report(CaptionProgress(done, total, message=f"loading {spec.name}"))
                captioner = spec.build(options)
                report(CaptionProgress(done, total, message=f"captioning with {spec.name}"))
            texts = _caption_batch(captioner, [image for _, _, image in batch], batch_size)
            for (rel, path, _), text in zip(batch, texts):
                done += 1
                if text is None:
                    reason = f"the {spec.name} backend could not caption it"
                    result.broken.append((path, reason))
                    report(CaptionProgress(done, total, rel, error=reason))
                    continue
                text = apply_prefix(prefix, text)
                target.put(rel, path, text)
                result.captions[rel] = text
                report(CaptionProgress(done, total, rel, caption=text))
            target.flush()
    finally:
        target.flush()
        if captioner is not None:
            captioner.close()
        captioner = None
        release_memory(options.device)
    result.notes = target.notes()
    return result


def _caption_batch(captioner, images, batch_size: int) -> List[Optional[str]]:
    try:
        return captioner.caption(images)
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise CaptionError(f"out of memory while captioning {batch_size} image(s) at once: "
                               f"lower --batch-size (or use --device cpu)") from None
        raise
