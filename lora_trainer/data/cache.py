"""Latent and text-encoder caches: encode each image / caption once instead of every step.

Either everything is encoded before the first step (`build`), or `defer` makes `get` encode each image /
caption when a batch first needs it (`cache_while_training`): the first step comes sooner, and since the
encoding runs in the same chunks `build` would use, the cached values are bit-identical either way.

Latents on disk live in `<train_data_dir>/.lora_trainer_cache/`, one file per (image content, bucket
size, flip, VAE): a re-run of the same data on the same model skips the VAE entirely.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .dataset import Sample, TrainingSet
from .scan import CACHE_DIR_NAME

Encoder = Callable[[torch.Tensor], torch.Tensor]
LatentKey = Tuple[int, bool]  # (image index, flipped)


class LatentCache:
    """Latents of every (image, flip) the run can use, kept in memory (and optionally on disk)."""

    def __init__(self, dataset: TrainingSet, model_key: str, to_disk: bool = False):
        self.dataset = dataset
        self.model_key = model_key
        self.to_disk = to_disk
        self.latents: Dict[LatentKey, torch.Tensor] = {}
        self.encoded = 0  # images sent through the VAE by this cache (0 on a fully cached re-run)
        # deferred mode: each missing key -> its chunk (None: read from disk), and what encodes it
        self._pending: Dict[LatentKey, Optional[List[LatentKey]]] = {}
        self._encode: Optional[Encoder] = None
        self._device: Optional[torch.device] = None
        self._on_complete: Optional[Callable[[], None]] = None

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
        self._pending = {key: None for key in on_disk}
        self._pending.update({key: chunk for chunk in chunks for key in chunk})
        self._encode, self._device, self._on_complete = encode, device, on_complete
        self._finish_if_complete()

    @property
    def complete(self) -> bool:
        """Every latent the run can use is held."""
        return not self._pending

    def _fill(self, key: LatentKey) -> None:
        chunk = self._pending[key]
        if chunk is None:
            self._read(key, self._device)
        else:
            self._encode_chunk(chunk, self._encode, self._device)
        for done in chunk or [key]:
            self._pending.pop(done, None)
        self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        if not self._pending and self._on_complete is not None:
            on_complete, self._on_complete, self._encode = self._on_complete, None, None
            on_complete()

    def get(self, samples: Sequence[Sample]) -> torch.Tensor:
        for s in samples:
            if (s.index, s.flip) not in self.latents:
                self._fill((s.index, s.flip))
        return torch.stack([self.latents[(s.index, s.flip)] for s in samples])


class TextCache:
    """Text-encoder outputs per distinct caption (only valid while the text encoder is frozen)."""

    def __init__(self) -> None:
        self.outputs: Dict[str, Dict[str, torch.Tensor]] = {}
        self._pending: Dict[str, List[str]] = {}  # deferred mode: caption -> the batch that encodes it
        self._encode: Optional[Callable[[Sequence[str]], Dict[str, torch.Tensor]]] = None
        self._on_complete: Optional[Callable[[], None]] = None

    @staticmethod
    def _chunks(unique: List[str], batch_size: int, part: Tuple[int, int]) -> List[List[str]]:
        return [unique[k:k + batch_size] for k in range(part[0] * batch_size, len(unique), part[1] * batch_size)]

    def _encode_chunk(self, chunk: List[str], encode: Callable[[Sequence[str]], Dict[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            out = encode(chunk)
        for j, caption in enumerate(chunk):
            self.outputs[caption] = {name: t[j].detach() for name, t in out.items()}

    def build(self, captions: Sequence[str], encode: Callable[[Sequence[str]], Dict[str, torch.Tensor]],
              batch_size: int = 16, part: Tuple[int, int] = (0, 1)) -> None:
        """Encode the captions not held yet; `part` (k, n): only the k-th of every n batches (as LatentCache)."""
        for chunk in self._chunks(sorted(set(captions) - set(self.outputs)), batch_size, part):
            self._encode_chunk(chunk, encode)

    def defer(self, captions: Sequence[str], encode: Callable[[Sequence[str]], Dict[str, torch.Tensor]],
              batch_size: int = 16, on_complete: Optional[Callable[[], None]] = None) -> None:
        """Encode nothing now: `get` encodes each caption's batch (the one it has in `build`) when first
        needed; `on_complete()` once every caption is held."""
        chunks = self._chunks(sorted(set(captions) - set(self.outputs)), batch_size, (0, 1))
        self._pending = {caption: chunk for chunk in chunks for caption in chunk}
        self._encode, self._on_complete = encode, on_complete
        self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        if not self._pending and self._on_complete is not None:
            on_complete, self._on_complete, self._encode = self._on_complete, None, None
            on_complete()

    def get(self, captions: Sequence[str]) -> Dict[str, torch.Tensor]:
        for caption in captions:
            if caption not in self.outputs and caption in self._pending:
                chunk = self._pending[caption]
                self._encode_chunk(chunk, self._encode)
                for done in chunk:
                    self._pending.pop(done, None)
                self._finish_if_complete()
        first = self.outputs[captions[0]]
        return {name: torch.stack([self.outputs[c][name] for c in captions]) for name in first}
