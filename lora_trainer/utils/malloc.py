"""Large CPU allocations mapped on their own while training adapters that build weight-sized changes.

LoHa, LoKr and DoRA build each adapted layer's whole weight change in its forward (and again in the
backward), a few MiB to tens of MiB per layer, freed right after, while the layer's activations stay
alive until the backward. glibc's malloc serves such sizes from its heap once it has seen one freed
(its mmap threshold rises to the largest freed size, up to 32 MiB), so the freed changes become holes
between live activations that the heap can neither reuse (the next layer's change is larger or a small
activation split the hole) nor give back: measured on full-size SD1.5 fp32 LoHa (3 steps, 256 px), peak
RSS 9.73 GiB against 7.95 GiB with a fixed 1 MiB threshold (plain LoRA: 7.43 GiB); inside a WebUI with an
fp32 SDXL checkpoint the growth reached the size of the UNet and the process was killed on 24 GiB.

`large_allocations_mapped()` fixes the threshold at 1 MiB for the duration (each larger block is its own
mapping, returned to the system when freed) and afterwards sets it to 32 MiB, where glibc's own dynamic
threshold ends up in a long-running process, and trims the heap. It changes nothing where the user set
MALLOC_MMAP_THRESHOLD_ or where the C library is not glibc. Plain LoRA and LoCon do not need it (their
changes go through the factors, nothing weight-sized is allocated) and would pay ~6% in page faults."""
from __future__ import annotations

import ctypes
import os
import platform
from contextlib import contextmanager
from typing import Iterator, Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRAINING_THRESHOLD = 1 << 20
AFTER_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where the dynamic threshold ends


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """Give the free memory at the heap's top and in its free pages back to the system (glibc only)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def large_allocations_mapped(enabled: bool = True) -> Iterator[bool]:
    """Within: CPU blocks over 1 MiB are mapped on their own (see the module docstring). Yields whether
    the setting was applied."""
    libc = _glibc() if enabled and "MALLOC_MMAP_THRESHOLD_" not in os.environ else None
    applied = bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, TRAINING_THRESHOLD) == 1)
    try:
        yield applied
    finally:
        if applied:
            libc.mallopt(M_MMAP_THRESHOLD, AFTER_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, 2 * AFTER_THRESHOLD)
            libc.malloc_trim(0)
