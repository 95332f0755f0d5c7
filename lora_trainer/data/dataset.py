"""The training set the engine iterates: images grouped by bucket, batched per epoch, deterministic.

Every random choice (order, flips, caption shuffles and drops) is derived from (seed, epoch, ...), so a
given epoch's batches are the same whenever they are computed: a resumed run sees exactly the data an
uninterrupted run would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..utils.seeding import generator, py_random
from .buckets import BucketSettings, Size, bucket_for, bucket_info_metadata, bucket_table, resize_plan
from .captions import apply_trigger, shuffle_tags
from .images import load_rgb
from .scan import ImageRecord, ScanResult


@dataclass(frozen=True)
class ImageInfo:
    """What the model may need to know about a training image (SDXL uses these as time ids)."""

    original_size: Tuple[int, int]  # (height, width)
    crop_top_left: Tuple[int, int]  # (top, left)
    target_size: Tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Sample:
    """One use of one image in one step: which record, flipped or not, which caption."""

    index: int
    flip: bool
    caption: str


@dataclass
class CaptionSettings:
    trigger_word: Optional[str] = None
    shuffle: bool = False
    keep_tokens: int = 0
    dropout_rate: float = 0.0

    @property
    def is_fixed(self) -> bool:
        """True when a record's caption is the same at every use (text-encoder outputs can be cached)."""
        return not self.shuffle and self.dropout_rate == 0


class TrainingSet:
    """Good images with their buckets; produces per-epoch batches and per-sample pixels and captions."""

    def __init__(self, scan: ScanResult, buckets: BucketSettings, captions: CaptionSettings,
                 flip_aug: bool = False, records: Optional[Sequence[ImageRecord]] = None):
        self.scan = scan
        self.records: List[ImageRecord] = [r for r in (scan.records if records is None else records) if r.repeats > 0]
        self.bucket_settings = buckets
        self.caption_settings = captions
        self.flip_aug = flip_aug
        self.buckets: List[Size] = [bucket_for(r.width, r.height, buckets) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: Sequence[int], flip_aug: Optional[bool] = None) -> "TrainingSet":
        """The same settings on some of the images (e.g. a validation split)."""
        return TrainingSet(self.scan, self.bucket_settings, self.caption_settings,
                           self.flip_aug if flip_aug is None else flip_aug, [self.records[i] for i in indices])

    # ------------------------------------------------------------------ structure
    @property
    def samples_per_epoch(self) -> int:
        return sum(r.repeats for r in self.records)

    def bucket_table(self) -> Dict[Size, int]:
        """Images (times repeats) per bucket."""
        return bucket_table(self.buckets, [r.repeats for r in self.records])

    def bucket_metadata(self) -> Dict:
        info = bucket_info_metadata(self.bucket_table())
        errors = [abs(bw / bh - r.width / r.height) for r, (bw, bh) in zip(self.records, self.buckets)]
        info["mean_img_ar_error"] = float(np.mean(errors)) if errors else 0.0
        return info

    def batches_per_epoch(self, batch_size: int) -> int:
        per_bucket: Dict[Size, int] = {}
        for r, b in zip(self.records, self.buckets):
            per_bucket[b] = per_bucket.get(b, 0) + r.repeats
        return sum(-(-n // batch_size) for n in per_bucket.values())

    def epoch_batches(self, epoch: int, seed: int, batch_size: int) -> List[List[Sample]]:
        """All batches of an epoch in training order; each batch holds images of one bucket."""
        by_bucket: Dict[Size, List[int]] = {}
        for i, (r, b) in enumerate(zip(self.records, self.buckets)):
            by_bucket.setdefault(b, []).extend([i] * r.repeats)
        batches: List[List[int]] = []
        for b in sorted(by_bucket):
            occ = by_bucket[b]
            order = torch.randperm(len(occ), generator=generator(seed, "order", epoch, b)).tolist()
            occ = [occ[j] for j in order]
            batches.extend(occ[k:k + batch_size] for k in range(0, len(occ), batch_size))
        order = torch.randperm(len(batches), generator=generator(seed, "batches", epoch)).tolist()
        out: List[List[Sample]] = []
        for n, bi in enumerate(order):
            rng = py_random(seed, "augment", epoch, n)
            out.append([Sample(i, self.flip_aug and rng.random() < 0.5, self.caption_for(i, rng))
                        for i in batches[bi]])
        return out

    # ------------------------------------------------------------------ per sample
    def caption_for(self, index: int, rng=None) -> str:
        """The caption used for one use of a record: maybe dropped, maybe shuffled, then the trigger word."""
        c = self.caption_settings
        caption = self.records[index].caption
        if rng is not None and not c.is_fixed:
            if c.dropout_rate > 0 and rng.random() < c.dropout_rate:
                return ""
            if c.shuffle:
                caption = shuffle_tags(caption, rng, c.keep_tokens)
        return apply_trigger(caption, c.trigger_word)

    def fixed_caption(self, index: int) -> str:
        return self.caption_for(index, None)

    def image_info(self, index: int) -> ImageInfo:
        r = self.records[index]
        bucket = self.buckets[index]
        _, (left, top) = resize_plan(r.width, r.height, bucket)
        return ImageInfo((r.height, r.width), (top, left), (bucket[1], bucket[0]))

    def pixels(self, index: int, flip: bool = False) -> torch.Tensor:
        """Image as a float tensor [3, H, W] in [-1, 1] at its bucket size."""
        r = self.records[index]
        return image_to_tensor(load_rgb(r.path), self.buckets[index], flip)


def image_to_tensor(img: Image.Image, bucket: Size, flip: bool = False) -> torch.Tensor:
    """Resize to cover the bucket, centre-crop to it, optionally flip; to [-1, 1]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    (rw, rh), (left, top) = resize_plan(img.width, img.height, bucket)
    if (rw, rh) != img.size:
        img = img.resize((rw, rh), Image.BICUBIC if rw > img.width else Image.LANCZOS)
    img = img.crop((left, top, left + bucket[0], top + bucket[1]))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def stack_pixels(dataset: TrainingSet, samples: Sequence[Sample]) -> torch.Tensor:
    return torch.stack([dataset.pixels(s.index, s.flip) for s in samples])


class PixelPrefetcher:
    """Loads the next steps' images on worker threads while the current step computes (no latent cache)."""

    def __init__(self, dataset: TrainingSet, workers: int, pin: bool = False):
        from concurrent.futures import ThreadPoolExecutor

        self.dataset = dataset
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lora-trainer-pixels")
        self.pin = pin
        self.pending: Dict[Tuple[int, bool], object] = {}

    def _load(self, index: int, flip: bool) -> torch.Tensor:
        t = self.dataset.pixels(index, flip)
        return t.pin_memory() if self.pin else t

    def prefetch(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            key = (s.index, s.flip)
            if key not in self.pending:
                self.pending[key] = self.pool.submit(self._load, s.index, s.flip)

    def get(self, samples: Sequence[Sample]) -> torch.Tensor:
        self.prefetch(samples)
        keys = [(s.index, s.flip) for s in samples]
        loaded = {key: self.pending.pop(key).result() for key in dict.fromkeys(keys)}
        return torch.stack([loaded[key] for key in keys])
