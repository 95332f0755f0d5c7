"""Model families and bundles. Register a new family here (one line)."""
from __future__ import annotations

from .family import FamilyRegistry, ModelFamily
from .sd1 import SD1Family
from .sd2 import SD2Family
from .sdxl import SDXLFamily


def default_families() -> FamilyRegistry:
    """All families this build knows, in detection order (SD1 last: it takes any other CLIP-L model)."""
    return FamilyRegistry([
        SDXLFamily(),
        SD2Family(),
        SD1Family(),
    ])


__all__ = ["FamilyRegistry", "ModelFamily", "default_families"]
