"""Counter-based randomness: every random draw of a run is a pure function of (seed, purpose, counters).

This is what makes a resumed run bit-identical to an uninterrupted one without replaying RNG streams,
and makes a sample or an evaluation in the middle of training unable to shift the training randomness.
"""
from __future__ import annotations

import hashlib
import random

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from the run seed and any labels/counters."""
    text = "/".join([str(seed)] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU torch.Generator for this (seed, parts)."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, *parts))


def py_random(seed: int, *parts: object) -> random.Random:
    """A python `random.Random` for this (seed, parts)."""
    return random.Random(derive_seed(seed, *parts))


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (for code outside our control, such as layer initialisation)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
