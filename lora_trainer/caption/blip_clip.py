"""BLIP caption followed by CLIP tags, like the WebUI's interrogator: "a dog on the grass, a photograph, ..."."""
from __future__ import annotations

from dataclasses import replace

from .base import CaptionerSpec, CaptionOptions, Captioner, build_joined
from .blip import BlipCaptioner
from .clip_tags import ClipTagger


def build_blip_clip(options: CaptionOptions) -> Captioner:
    """BLIP from `model`, CLIP from `clip_model` (each its default when not given)."""
    return build_joined([lambda: BlipCaptioner(options),
                         lambda: ClipTagger(replace(options, model=None))])


SPEC = CaptionerSpec("blip+clip-tags", "a BLIP caption, then CLIP tags; --model: BLIP folder, --clip-model: CLIP folder",
                   build_blip_clip)
