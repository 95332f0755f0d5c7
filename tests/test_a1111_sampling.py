"""Samples rendered through the WebUI's txt2img while the text encoder trains, and the WebUI's cond cache.

A1111 v1.10.1 keeps the last prompt's text-encoder output across generations (`persistent_cond_cache`, on by
default) in class attributes of `StableDiffusionProcessing`, keyed by prompt and settings, not by weights.
Seen in a real WebUI: a sample during training reused the untrained cond, and a txt2img after training got
the cond the in-training text encoder had computed. `StandInProcessing` keeps exactly that caching rule and
nothing else of `modules.processing` (a stand-in, named as such); the real check is tools/webui_e2e.py.
"""
from __future__ import annotations

import sys
import types

import pytest

from lora_trainer.hosts.a1111 import sampling

TEXT_ENCODER = {"weight": 1.0}  # what the text encoder's output depends on


class StandInProcessing:
    """The cond cache of modules.processing.StableDiffusionProcessing (class-level, copied at init)."""

    cached_c = [None, None]
    cached_uc = [None, None]

    def __init__(self, prompt: str, **settings):
        self.prompt = prompt
        self.cached_c = StandInProcessing.cached_c  # as __post_init__ does

    def cond(self) -> float:
        if self.cached_c[0] != self.prompt:
            self.cached_c[0], self.cached_c[1] = self.prompt, TEXT_ENCODER["weight"] * len(self.prompt)
        return self.cached_c[1]

    def close(self) -> None:  # persistent_cond_cache on: the cache stays
        pass


@pytest.fixture
def stand_in_webui(monkeypatch):
    processing = types.ModuleType("modules.processing")
    processing.StableDiffusionProcessing = StandInProcessing
    processing.StableDiffusionProcessingTxt2Img = lambda **kw: StandInProcessing(**kw)
    processing.process_images = lambda p: types.SimpleNamespace(images=[p.cond()])
    shared = types.ModuleType("modules.shared")
    shared.sd_model, shared.state = object(), types.SimpleNamespace()
    modules = types.ModuleType("modules")
    modules.processing, modules.shared = processing, shared
    for name, module in (("modules", modules), ("modules.processing", processing), ("modules.shared", shared)):
        monkeypatch.setitem(sys.modules, name, module)
    StandInProcessing.cached_c, StandInProcessing.cached_uc = [None, None], [None, None]
    return processing


def user_txt2img(processing, prompt: str) -> float:
    """A generation the user starts (the WebUI's own path, not ours)."""
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(prompt=prompt)).images[0]


def test_samples_see_the_training_text_encoder_and_leave_no_cond_behind(stand_in_webui):
    prompt = "shpz, a red circle"
    before = user_txt2img(stand_in_webui, prompt)  # caches the base text encoder's cond
    TEXT_ENCODER["weight"] = 2.0  # training changes the text encoder (LoRA layers)
    try:
        sample = sampling.txt2img(prompt, "", 64, 64, 4, 7.0, 3)
        assert sample == 2.0 * len(prompt)  # not the cached cond of the untrained text encoder
    finally:
        TEXT_ENCODER["weight"] = 1.0  # training ends: the text encoder is as it was
    assert user_txt2img(stand_in_webui, prompt) == before  # not the in-training cond
