"""The captioners this package ships (`--backend` names), in the order the UI lists them. Register a new one
here."""
from __future__ import annotations

from ..hosts.a1111 import captioners
from . import blip, blip_clip, clip_tags
from .base import CaptionerRegistry


def default_captioners() -> CaptionerRegistry:
    """Every captioner this package ships, in the order the UI lists them."""
    return CaptionerRegistry([
        blip.SPEC,
        clip_tags.SPEC,
        blip_clip.SPEC,
        captioners.INTERROGATOR,
        captioners.DEEPBOORU,
    ])
