"""The dataset report ("doctor"): what will be trained, and what is wrong, before GPU time is spent."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .buckets import BucketSettings, format_bucket_table
from .scan import ImageRecord

MAX_TOKENS = 75  # CLIP's window without BOS/EOS
NEAR_DUPLICATE_BITS = 4


@dataclass
class DatasetReport:
    num_images: int
    samples_per_epoch: int
    batches_per_epoch: int
    steps_per_epoch: int
    folders: Dict[str, Tuple[int, int]]  # subset -> (images, repeats)
    buckets: Dict[Tuple[int, int], int]
    broken: List[Tuple[str, str]] = field(default_factory=list)
    small: List[Tuple[str, int, int]] = field(default_factory=list)
    exact_duplicates: List[Tuple[str, str]] = field(default_factory=list)
    near_duplicates: List[Tuple[str, str]] = field(default_factory=list)
    missing_captions: List[str] = field(default_factory=list)
    empty_captions: List[str] = field(default_factory=list)
    long_captions: List[Tuple[str, int]] = field(default_factory=list)
    top_tags: List[Tuple[str, int]] = field(default_factory=list)
    resolution: str = ""  # the sizes that will really be trained, in words
    missing_files: List[str] = field(default_factory=list)  # metadata.csv rows naming no image of the folder
    fatal: Optional[str] = None

    @property
    def can_train(self) -> bool:
        return self.fatal is None and self.num_images > 0

    def summary_lines(self) -> List[str]:
        out = [f"images: {self.num_images} good, {len(self.broken)} broken (skipped); "
               f"{self.samples_per_epoch} samples/epoch with repeats; "
               f"{self.batches_per_epoch} batches/epoch; {self.steps_per_epoch} steps/epoch"]
        if self.resolution:
            out.append(self.resolution)
        out.append("folders:")
        out += [f"  {name or '.':30} {n:>5} image(s) x {rep} repeats" for name, (n, rep) in sorted(self.folders.items())]
        out.append("buckets (width x height):")
        out += format_bucket_table(self.buckets)
        if self.top_tags:
            out.append("most frequent tags: " + ", ".join(f"{t} ({n})" for t, n in self.top_tags))
        return out

    def problem_lines(self) -> List[str]:
        out = [f"BROKEN  {path}: {reason}" for path, reason in self.broken]
        out += [f"DUPLICATE  {a} == {b} (identical files)" for a, b in self.exact_duplicates]
        out += [f"NEAR-DUPLICATE  {a} ~ {b} (perceptual hash)" for a, b in self.near_duplicates]
        out += [f"SMALL  {path}: {w}x{h} is smaller than the training resolution (it will be upscaled)"
                for path, w, h in self.small]
        out += [f"NO CAPTION  {path}" for path in self.missing_captions]
        out += [f"MISSING FILE  {row}" for row in self.missing_files]
        out += [f"EMPTY CAPTION  {path}" for path in self.empty_captions]
        out += [f"LONG CAPTION  {path}: {n} tokens, only the first {MAX_TOKENS} are used"
                for path, n in self.long_captions]
        return out

    def lines(self) -> List[str]:
        verdict = "ready to train" if self.can_train else f"cannot train: {self.fatal}"
        return self.summary_lines() + self.problem_lines() + [f"verdict: {verdict}"]


def tag_frequency(records: Sequence[ImageRecord]) -> Dict[str, Dict[str, int]]:
    """kohya's `ss_tag_frequency`: {folder: {tag: count}} of comma-separated caption tags."""
    out: Dict[str, Dict[str, int]] = {}
    for r in records:
        counts = out.setdefault(r.subset or ".", {})
        for tag in (t.strip() for t in r.caption.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return out


def _hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def find_duplicates(records: Sequence[ImageRecord]) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """Exact duplicates (same bytes) and near duplicates (close perceptual hash and colours)."""
    exact, near = [], []
    by_hash: Dict[str, str] = {}
    for r in records:
        if r.sha256 in by_hash:
            exact.append((by_hash[r.sha256], r.rel))
        else:
            by_hash[r.sha256] = r.rel
    unique = [r for r in records if by_hash.get(r.sha256) == r.rel]
    if len(unique) <= 2000:  # pairwise check; beyond that only exact duplicates are reported
        for a, b in combinations(unique, 2):
            if _hamming(a.dhash, b.dhash) <= NEAR_DUPLICATE_BITS and _colour_close(a, b):
                near.append((a.rel, b.rel))
    return exact, near


def _colour_close(a: ImageRecord, b: ImageRecord) -> bool:
    if not a.thumb or not b.thumb:
        return True
    diff = sum(abs(x - y) for x, y in zip(a.thumb, b.thumb)) / len(a.thumb)
    return diff < 8.0


def resolution_text(s: BucketSettings) -> str:
    """The training resolution as it will really be used: the bucket limits, or the square crop."""
    if not s.enabled:
        return f"resolution {s.resolution} px: every image centre-cropped to {s.resolution}x{s.resolution}"
    return (f"resolution {s.resolution} px: buckets of at most {s.resolution}x{s.resolution} px in area, sides "
            f"{s.min_side} to {s.max_side} px in steps of {s.step}" + (", never upscaled" if s.no_upscale else ""))


def build_report(dataset, batch_size: int, grad_accum: int, broken: Sequence[Tuple[str, str]] = (),
                 count_tokens: Optional[Callable[[str], int]] = None) -> DatasetReport:
    """Everything the user should know about a `TrainingSet` before training."""
    records = dataset.records
    folders: Dict[str, Tuple[int, int]] = {}
    for r in records:
        n, _ = folders.get(r.subset, (0, r.repeats))
        folders[r.subset] = (n + 1, r.repeats)
    batches = dataset.batches_per_epoch(batch_size)
    exact, near = find_duplicates(records)
    res = dataset.bucket_settings.resolution
    counter: Counter = Counter()
    for r in records:
        counter.update(t.strip() for t in r.caption.split(",") if t.strip())
    long = []
    if count_tokens is not None:
        for i, r in enumerate(records):
            n = count_tokens(dataset.fixed_caption(i))
            if n > MAX_TOKENS:
                long.append((r.rel, n))
    report = DatasetReport(
        num_images=len(records), samples_per_epoch=dataset.samples_per_epoch, batches_per_epoch=batches,
        steps_per_epoch=max(1, -(-batches // grad_accum)), folders=folders, buckets=dataset.bucket_table(),
        broken=[(str(p), why) for p, why in broken],
        small=[(r.rel, r.width, r.height) for r in records if r.width * r.height < res * res and min(r.width, r.height) < res],
        exact_duplicates=exact, near_duplicates=near,
        missing_captions=[r.rel for r in records if r.caption_source == "none"],
        empty_captions=[r.rel for r in records if r.caption_source in ("csv", "sidecar") and not r.caption],
        long_captions=long, top_tags=counter.most_common(10), resolution=resolution_text(dataset.bucket_settings),
        missing_files=list(dataset.scan.missing_files))
    if not records:
        report.fatal = "no usable images"
    elif report.missing_captions and not dataset.caption_settings.trigger_word:
        report.fatal = f"{len(report.missing_captions)} image(s) have no caption"
    return report
