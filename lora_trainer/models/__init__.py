"""Model families and bundles. Register a new family here (one line)."""
from __future__ import annotations

from .family import FamilyRegistry, ModelFamily
from .sd1 import SD1Family


def default_families() -> FamilyRegistry:
    """All families this build knows, in detection order."""
    return FamilyRegistry([
        SD1Family(),
    ])


__all__ = ["FamilyRegistry", "ModelFamily", "default_families"]
