"""Which in-place bundle trains the model the WebUI has loaded: one line per model family.

The WebUI holds SD1 and SD2 as ldm `LatentDiffusion` (a CLIP or an OpenCLIP text encoder behind its own
wrapper) and SDXL as sgm `DiffusionEngine` (a `conditioner` of embedders). Each layout looks at the
model object and claims it or declines; the first that claims it decides the family.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from torch import nn

from ...errors import ModelLoadError
from ...models import FamilyRegistry, default_families
from ...models.bundle import ModelBundle
from .bundle import A1111Bundle, find_clip_text_model, find_open_clip_model
from .sdxl_bundle import A1111SDXLBundle


def is_sgm_sdxl(sd_model: nn.Module) -> bool:
    return getattr(sd_model, "conditioner", None) is not None


def is_ldm_with_open_clip(sd_model: nn.Module) -> bool:
    """SD2: an ldm model whose text encoder wraps ldm's FrozenOpenCLIPEmbedder."""
    cond = getattr(sd_model, "cond_stage_model", None)
    return not hasattr(sd_model, "conditioner") and cond is not None and find_open_clip_model(cond) is not None


def is_ldm_with_clip(sd_model: nn.Module) -> bool:
    """SD1: an ldm model whose text encoder wraps a transformers CLIPTextModel."""
    cond = getattr(sd_model, "cond_stage_model", None)
    if hasattr(sd_model, "conditioner") or cond is None:
        return False
    try:
        find_clip_text_model(cond)
    except ModelLoadError:
        return False
    return True


class Layout(NamedTuple):
    family: str  # the model family's name (models/)
    claims: Callable[[nn.Module], bool]
    bundle_class: Any


LAYOUTS = (
    Layout("sdxl", is_sgm_sdxl, A1111SDXLBundle),
    Layout("sd2", is_ldm_with_open_clip, A1111Bundle),
    Layout("sd1", is_ldm_with_clip, A1111Bundle),
)


def in_place_bundle(sd_model: nn.Module, name: str = "", offload: bool = False,
                    families: Optional[FamilyRegistry] = None) -> Optional[ModelBundle]:
    """The bundle that trains the WebUI's loaded `sd_model` in place, or None when no layout claims it."""
    families = families or default_families()
    for layout in LAYOUTS:
        if layout.claims(sd_model):
            return layout.bundle_class(sd_model, families.get(layout.family), name=name, offload=offload)
    return None
