"""Latent and text-encoder caches: encode each image / caption once instead of every step.

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


class LatentCache:
    """Latents of every (image, flip) the run can use, kept in memory (and optionally on disk)."""

    def __init__(self, dataset: TrainingSet, model_key: str, to_disk: bool = False):
        self.dataset = dataset
        self.model_key = model_key
        self.to_disk = to_disk
        self.latents: Dict[Tuple[int, bool], torch.Tensor] = {}
        self.encoded = 0  # images sent through the VAE by this cache (0 on a fully cached re-run)

    def _disk_path(self, index: int, flip: bool) -> Path:
        r = self.dataset.records[index]
        w, h = self.dataset.buckets[index]
        return (self.dataset.scan.root / CACHE_DIR_NAME /
                f"{r.sha256[:20]}_{w}x{h}_{'f' if flip else 'n'}_{self.model_key}.safetensors")

    def build(self, encode: Encoder, batch_size: int = 4, device: Optional[torch.device] = None,
              progress: Optional[Callable[[int, int], None]] = None, part: Tuple[int, int] = (0, 1)) -> None:
        """Encode (or read from disk) every needed latent not held yet. `part` (k, n): only the k-th of every
        n disk reads and VAE batches (one data-parallel rank's share; the batches are the ones a single
        process encodes, so the latents are the same)."""
        from safetensors.torch import load_file

        from ..utils.atomic import atomic_save_safetensors

        flips = (False, True) if self.dataset.flip_aug else (False,)
        todo: Dict[Tuple[int, int], List[Tuple[int, bool]]] = {}
        on_disk: List[Tuple[int, bool]] = []
        for key in ((i, flip) for i in range(len(self.dataset)) for flip in flips):
            if key in self.latents:
                continue
            if self.to_disk and self._disk_path(*key).is_file():
                on_disk.append(key)
            else:
                todo.setdefault(self.dataset.buckets[key[0]], []).append(key)
        for i, flip in on_disk[part[0]::part[1]]:
            self.latents[(i, flip)] = load_file(str(self._disk_path(i, flip)))["latent"].to(device or "cpu")
        chunks = [keys[k:k + batch_size] for keys in (todo[b] for b in sorted(todo))
                  for k in range(0, len(keys), batch_size)][part[0]::part[1]]
        total, done = sum(len(c) for c in chunks), 0
        for chunk in chunks:
            pixels = torch.stack([self.dataset.pixels(i, flip) for i, flip in chunk])
            latents = encode(pixels).float()
            self.encoded += len(chunk)
            for (i, flip), lat in zip(chunk, latents):
                self.latents[(i, flip)] = lat.to(device or lat.device)
                if self.to_disk:
                    atomic_save_safetensors(self._disk_path(i, flip), {"latent": lat})
            done += len(chunk)
            if progress:
                progress(done, total)

    def get(self, samples: Sequence[Sample]) -> torch.Tensor:
        return torch.stack([self.latents[(s.index, s.flip)] for s in samples])


class TextCache:
    """Text-encoder outputs per distinct caption (only valid while the text encoder is frozen)."""

    def __init__(self) -> None:
        self.outputs: Dict[str, Dict[str, torch.Tensor]] = {}

    def build(self, captions: Sequence[str], encode: Callable[[Sequence[str]], Dict[str, torch.Tensor]],
              batch_size: int = 16, part: Tuple[int, int] = (0, 1)) -> None:
        """Encode the captions not held yet; `part` (k, n): only the k-th of every n batches (as LatentCache)."""
        unique = sorted(set(captions) - set(self.outputs))
        for k in range(part[0] * batch_size, len(unique), part[1] * batch_size):
            chunk = unique[k:k + batch_size]
            with torch.no_grad():
                out = encode(chunk)
            for j, caption in enumerate(chunk):
                self.outputs[caption] = {name: t[j].detach() for name, t in out.items()}

    def get(self, captions: Sequence[str]) -> Dict[str, torch.Tensor]:
        first = self.outputs[captions[0]]
        return {name: torch.stack([self.outputs[c][name] for c in captions]) for name in first}
