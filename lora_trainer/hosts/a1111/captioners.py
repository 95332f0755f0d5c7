"""The WebUI's own interrogators as captioners (inside the AUTOMATIC1111 WebUI only; nothing new is downloaded).

- `webui-interrogator`: `shared.interrogator.interrogate(image)`, its BLIP caption plus CLIP flavours;
- `webui-deepbooru`: `deepbooru.model` (anime-style tags), started once per run and stopped afterwards.

Both call `shared.state.begin()/end()` (or may), which reset the job fields that our own job's progress
bar reads and clear the Interrupt flag; every call is wrapped in `preserved_state` so they do not.
`modules.*` is imported inside functions only: this file imports fine outside the WebUI.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Sequence

from PIL import Image

from .state import preserved_state
from ...caption.base import CaptionerSpec, CaptionOptions, Captioner

WEBUI_ONLY = "runs only inside the AUTOMATIC1111 WebUI"


def _shared() -> Any:
    from modules import shared  # the WebUI's module: present only inside the WebUI

    return shared


def _webui_reason() -> Optional[str]:
    shared = sys.modules.get("modules.shared")
    return None if shared is not None and hasattr(shared, "state") else WEBUI_ONLY


def _interrogator_reason() -> Optional[str]:
    reason = _webui_reason()
    if reason is None and getattr(sys.modules["modules.shared"], "interrogator", None) is None:
        return "needs the WebUI's interrogator (shared.interrogator), which this WebUI does not have"
    return reason


class WebUIInterrogator(Captioner):
    """The WebUI's BLIP + CLIP interrogator ("Interrogate CLIP" in img2img). Settings are the WebUI's."""

    def __init__(self, options: CaptionOptions):
        self.shared = _shared()

    def caption(self, images: Sequence[Image.Image]) -> List[Optional[str]]:
        out: List[Optional[str]] = []
        for image in images:
            with preserved_state(self.shared.state):
                text = self.shared.interrogator.interrogate(image.convert("RGB"))
            # the interrogator reports its own errors and returns what it has plus "<error>"
            out.append(None if text is None or "<error>" in text else text.strip())
        return out

    def close(self) -> None:
        if self.shared is not None:
            with preserved_state(self.shared.state):
                self.shared.interrogator.unload()  # to RAM unless "keep models in VRAM" is set
        self.shared = None


class WebUIDeepBooru(Captioner):
    """The WebUI's DeepBooru tagger ("Interrogate DeepBooru"). Threshold and tag style are the WebUI's."""

    def __init__(self, options: CaptionOptions):
        from modules import deepbooru

        self.shared = _shared()
        self.deepbooru = deepbooru
        with preserved_state(self.shared.state):
            deepbooru.model.start()  # loads once, moves to the GPU

    def caption(self, images: Sequence[Image.Image]) -> List[Optional[str]]:
        out: List[Optional[str]] = []
        for image in images:
            with preserved_state(self.shared.state):
                out.append(self.deepbooru.model.tag_multi(image.convert("RGB")).strip())
        return out

    def close(self) -> None:
        if self.deepbooru is not None:
            with preserved_state(self.shared.state):
                self.deepbooru.model.stop()  # to RAM unless "keep models in VRAM" is set
        self.deepbooru = None
        self.shared = None


INTERROGATOR = CaptionerSpec("webui-interrogator", "the WebUI's BLIP+CLIP interrogator (inside the WebUI only)",
                           WebUIInterrogator, _interrogator_reason)
DEEPBOORU = CaptionerSpec("webui-deepbooru", "the WebUI's DeepBooru tagger (inside the WebUI only)",
                        WebUIDeepBooru, _webui_reason)
