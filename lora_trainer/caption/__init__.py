"""Auto-captioning: BLIP captions, CLIP tags, and the WebUI's own interrogators.

`caption_folder(...)` (runner.py) is the one entry point for the CLI and the UI. A backend is one file
with a `Captioner` and a `BackendSpec`, plus one line in `default_backends()` (backends.py).
"""
from __future__ import annotations

from .backends import default_backends
from .base import BackendRegistry, BackendSpec, CaptionOptions, Captioner
from .runner import CaptionProgress, CaptionResult, apply_prefix, caption_folder

__all__ = ["BackendRegistry", "BackendSpec", "CaptionOptions", "CaptionProgress", "CaptionResult", "Captioner",
           "apply_prefix", "caption_folder", "default_backends"]
