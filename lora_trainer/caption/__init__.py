"""Auto-captioning: BLIP captions, CLIP tags, and the WebUI's own interrogators.

`caption_folder(...)` (runner.py) is the one entry point for the CLI and the UI. A captioner (`--backend`
on the command line) is one file with a `Captioner` and a `CaptionerSpec`, plus one line in
`default_captioners()` (registry.py).
"""
from __future__ import annotations

from .registry import default_captioners
from .base import CaptionerRegistry, CaptionerSpec, CaptionOptions, Captioner
from .runner import CaptionProgress, CaptionResult, apply_prefix, caption_folder

__all__ = ["CaptionerRegistry", "CaptionerSpec", "CaptionOptions", "CaptionProgress", "CaptionResult", "Captioner",
           "apply_prefix", "caption_folder", "default_captioners"]
