"""Aspect-ratio buckets: each image trains at a size close to `resolution`^2 in area that keeps its
framing; images of the same bucket size are batched together.

Rule (one formula for every image): scale the image so its area is at most resolution^2 (and its long
side at most `max_side`; never above 1 with `no_upscale`), then round each side *down* to a multiple of
`step`. Resizing the image to cover that bucket then crops less than `step` pixels from one side: the
framing is kept within one bucket step.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

Size = Tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class BucketSettings:
    resolution: int = 512
    step: int = 64
    min_side: int = 256
    max_side: int = 1024
    no_upscale: bool = False
    enabled: bool = True


def bucket_for(width: int, height: int, s: BucketSettings) -> Size:
    """The bucket (width, height) for an image of the given size."""
    if not s.enabled:
        return (s.resolution, s.resolution)
    scale = math.sqrt(s.resolution * s.resolution / float(width * height))
    scale = min(scale, s.max_side / float(max(width, height)))
    if s.no_upscale:
        scale = min(scale, 1.0)
    elif min(width, height) * scale < s.min_side:
        # a very elongated image: keep the short side at min_side, crop the long side to max_side
        scale = s.min_side / float(min(width, height))
    bw = max(s.step, int(width * scale) // s.step * s.step)
    bh = max(s.step, int(height * scale) // s.step * s.step)
    if not s.no_upscale:
        bw, bh = min(bw, s.max_side // s.step * s.step), min(bh, s.max_side // s.step * s.step)
    return (bw, bh)


def resize_plan(width: int, height: int, bucket: Size) -> Tuple[Size, Tuple[int, int]]:
    """Size to resize to (covering the bucket) and the (left, top) of the centred crop."""
    bw, bh = bucket
    scale = max(bw / float(width), bh / float(height))
    rw, rh = max(bw, int(width * scale)), max(bh, int(height * scale))
    return (rw, rh), ((rw - bw) // 2, (rh - bh) // 2)


def bucket_table(buckets: Iterable[Size], weights: Iterable[int] = ()) -> Dict[Size, int]:
    """Count images (times their repeats, when weights are given) per bucket, sorted by size."""
    counts: Counter = Counter()
    weights = list(weights)
    for i, b in enumerate(buckets):
        counts[b] += weights[i] if weights else 1
    return dict(sorted(counts.items()))


def bucket_info_metadata(table: Dict[Size, int]) -> Dict:
    """kohya's `ss_bucket_info` structure."""
    return {
        "buckets": {str(i): {"resolution": [w, h], "count": n} for i, ((w, h), n) in enumerate(table.items())},
        "mean_img_ar_error": 0.0,
    }


def format_bucket_table(table: Dict[Size, int]) -> List[str]:
    return [f"  {w:>5} x {h:<5} {n:>6} image(s)" for (w, h), n in table.items()]
