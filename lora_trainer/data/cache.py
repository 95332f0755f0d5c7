"""Latent and text-encoder caches: encode each image / caption once instead of every step.

Either everything is encoded before the first step (`build`), or `defer` makes `get` encode each image /
caption when a batch first needs it (`cache_while_training`): the first step comes sooner, and since the
encoding runs in the same chunks `build` would use, the cached values are bit-identical either way.

Latents on disk live in `<train_data_dir>/.lora_trainer_cache/`, one file per (image content, bucket
size, flip, VAE): a re-run of the same data on the same model skips the VAE entirely.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch

from .dataset import Sample, TrainingSet
from .scan import CACHE_DIR_NAME

Encoder = Callable[[torch.Tensor], torch.Tensor]
LatentKey = Tuple[int, bool]  # (image index, flipped)
TextEncoder = Callable[[Sequence[str]], Dict[str, torch.Tensor]]


class FillOnDemand:
    """Keys not cached yet, each with the batch that fills it (`fill(batch)`): `ensure(keys)` fills the batches
    of those still missing, each once; `on_complete()` runs once every batch is filled (at once if none)."""

    def __init__(self, batches: Sequence[List[Hashable]], fill: Callable[[List[Hashable]], None],
                 on_complete: Optional[Callable[[], None]] = None):
        self._batch_of = {key: batch for batch in batches for key in batch}
        self._fill, self._on_complete = fill, on_complete
        self._finish_if_complete()

    def ensure(self, keys: Sequence[Hashable]) -> None:
        for key in keys:
            batch = self._batch_of.get(key)
            if batch is not None:
                self._fill(batch)
                for done in batch:
                    del self._batch_of[done]
                self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        if not self._batch_of and self._on_complete is not None:
            on_complete, self._on_complete = self._on_complete, None
            on_complete()


class LatentCache:
    """Latents of every (image, flip) the run can use, kept in memory (and optionally on disk)."""

    def __init__(self, dataset: TrainingSet, model_key: str, to_disk: bool = False):
        self.dataset = dataset
        self.model_key = model_key
        self.to_disk = to_disk
        self.latents: Dict[LatentKey, torch.Tensor] = {}
        self.encoded = 0  # images sent through the VAE by this cache (0 on a fully cached re-run)
        self._deferred: Optional[FillOnDemand] = None

    def _disk_path(self, index: int, flip: bool) -> Path:
        r = self.dataset.records[index]
        w, h = self.dataset.buckets[index]
        return (self.dataset.scan.root / CACHE_DIR_NAME /
                f"{r.sha256[:20]}_{w}x{h}_{'f' if flip else 'n'}_{self.model_key}.safetensors")

    def _plan(self, batch_size: int, part: Tuple[int, int]) -> Tuple[List[LatentKey], List[List[LatentKey]]]:
        """The latents not held yet: those to read from disk, and the VAE batches (per bucket, in bucket
        order) that encode the rest; `part` (k, n) keeps the k-th of every n of each."""
        flips = (False, True) if self.dataset.flip_aug else (False,)
        todo: Dict[Tuple[int, int], List[LatentKey]] = {}
        on_disk: List[LatentKey] = []
        for key in ((i, flip) for i in range(len(self.dataset)) for flip in flips):
            if key in self.latents:
                continue
            if self.to_disk and self._disk_path(*key).is_file():
                on_disk.append(key)
            else:
                todo.setdefault(self.dataset.buckets[key[0]], []).append(key)
        chunks = [keys[k:k + batch_size] for keys in (todo[b] for b in sorted(todo))
                  for k in range(0, len(keys), batch_size)]
        return on_disk[part[0]::part[1]], chunks[part[0]::part[1]]

    def _read(self, key: LatentKey, device: Optional[torch.device]) -> None:
        from safetensors.torch import load_file

        self.latents[key] = load_file(str(self._disk_path(*key)))["latent"].to(device or "cpu")

    def _encode_chunk(self, chunk: List[LatentKey], encode: Encoder, device: Optional[torch.device]) -> None:
        from ..utils.atomic import atomic_save_safetensors

        pixels = torch.stack([self.dataset.pixels(i, flip) for i, flip in chunk])
        latents = encode(pixels).float()
        self.encoded += len(chunk)
        for (i, flip), lat in zip(chunk, latents):
            self.latents[(i, flip)] = lat.to(device or lat.device)
            if self.to_disk:
                atomic_save_safetensors(self._disk_path(i, flip), {"latent": lat})

    def build(self, encode: Encoder, batch_size: int = 4, device: Optional[torch.device] = None,
              progress: Optional[Callable[[int, int], None]] = None, part: Tuple[int, int] = (0, 1)) -> None:
        """Encode (or read from disk) every needed latent not held yet. `part` (k, n): only the k-th of every
        n disk reads and VAE batches (one data-parallel rank's share; the batches are the ones a single
        process encodes, so the latents are the same)."""
        on_disk, chunks = self._plan(batch_size, part)
        for key in on_disk:
            self._read(key, device)
        total, done = sum(len(c) for c in chunks), 0
        for chunk in chunks:
            self._encode_chunk(chunk, encode, device)
            done += len(chunk)
            if progress:
                progress(done, total)

    def defer(self, encode: Encoder, batch_size: int = 4, device: Optional[torch.device] = None,
              on_complete: Optional[Callable[[], None]] = None) -> None:
        """Encode nothing now: `get` reads or encodes each latent when a batch first needs it, with the VAE
        batch it has in `build` (so the latents are bit-identical); `on_complete()` once all are held."""
        on_disk, chunks = self._plan(batch_size, (0, 1))
        from_disk = set(on_disk)

        def fill(batch: List[LatentKey]) -> None:  # a disk read is a batch of its own key
            if batch[0] in from_disk:
                self._read(batch[0], device)
            else:
                self._encode_chunk(batch, encode, device)

        self._deferred = FillOnDemand([[key] for key in on_disk] + chunks, fill, on_complete)

    def get(self, samples: Sequence[Sample]) -> torch.Tensor:
        if self._deferred is not None:
            self._deferred.ensure([(s.index, s.flip) for s in samples])
        return torch.stack([self.latents[(s.index, s.flip)] for s in samples])


class TextCache:
    """Text-encoder outputs per distinct caption (only valid while the text encoder is frozen)."""

    def __init__(self) -> None:
        self.outputs: Dict[str, Dict[str, torch.Tensor]] = {}
        self._deferred: Optional[FillOnDemand] = None

    @staticmethod
    def _chunks(unique: List[str], batch_size: int, part: Tuple[int, int]) -> List[List[str]]:
        return [unique[k:k + batch_size] for k in range(part[0] * batch_size, len(unique), part[1] * batch_size)]

    def _encode_chunk(self, chunk: List[str], encode: TextEncoder) -> None:
        with torch.no_grad():
            out = encode(chunk)
        for j, caption in enumerate(chunk):
            self.outputs[caption] = {name: t[j].detach() for name, t in out.items()}

    def build(self, captions: Sequence[str], encode: TextEncoder,
              batch_size: int = 16, part: Tuple[int, int] = (0, 1)) -> None:
        """Encode the captions not held yet; `part` (k, n): only the k-th of every n batches (as LatentCache)."""
        for chunk in self._chunks(sorted(set(captions) - set(self.outputs)), batch_size, part):
            self._encode_chunk(chunk, encode)

    def defer(self, captions: Sequence[str], encode: TextEncoder, batch_size: int = 16,
              on_complete: Optional[Callable[[], None]] = None) -> None:
        """Encode nothing now: `get` encodes each caption's batch (the one it has in `build`) when first
        needed; `on_complete()` once every caption is held."""
        chunks = self._chunks(sorted(set(captions) - set(self.outputs)), batch_size, (0, 1))
        self._deferred = FillOnDemand(chunks, lambda chunk: self._encode_chunk(chunk, encode), on_complete)

    def get(self, captions: Sequence[str]) -> Dict[str, torch.Tensor]:
        if self._deferred is not None:
            self._deferred.ensure(captions)
        first = self.outputs[captions[0]]
        return {name: torch.stack([self.outputs[c][name] for c in captions]) for name in first}
