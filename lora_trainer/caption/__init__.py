"""Auto-captioning: BLIP captions, CLIP tags, and the WebUI's own interrogators.

`caption_folder(...)` (runner.py) is the one entry point for the CLI and the UI. A backend is one file
with a `Captioner` and a `BackendSpec`, plus one line in `default_backends()` below.
"""
from __future__ import annotations

from .base import BackendRegistry, BackendSpec, CaptionOptions, Captioner
from .runner import CaptionProgress, CaptionResult, apply_prefix, caption_folder


def default_backends() -> BackendRegistry:
    """Every backend this package ships, in the order the UI lists them."""
    from . import blip, blip_clip, clip_tags, webui

    return BackendRegistry([
        blip.SPEC,
        clip_tags.SPEC,
        blip_clip.SPEC,
        webui.INTERROGATOR,
        webui.DEEPBOORU,
    ])


__all__ = ["BackendRegistry", "BackendSpec", "CaptionOptions", "CaptionProgress", "CaptionResult", "Captioner",
           "apply_prefix", "caption_folder", "default_backends"]
