"""The trainer's latent and caption caches: built before the first step, or (one process) filled as the
first epoch needs them, which gives the same values sooner (data/cache.FillOnDemand)."""
from __future__ import annotations

from typing import Callable, ContextManager, Optional, Tuple

import torch

from ..config import TrainConfig
from ..data.cache import LatentCache, TextCache
from ..data.dataset import TrainingSet
from ..events import Events
from ..models.bundle import ModelBundle
from ..utils.malloc import trim_heap
from .distributed import Distributed


def build_caches(cfg: TrainConfig, dataset: TrainingSet, bundle: ModelBundle, device: torch.device,
                 dist: Distributed, events: Events, autocast: Callable[[], ContextManager],
                 global_batch_size: int, release: bool = False) -> Tuple[Optional[LatentCache], Optional[TextCache]]:
    """(latent cache, text cache), each None where the config or the run does not cache. Once a cache is
    full its encoder is offloaded, or with `release` (the run loaded the model and renders nothing) freed."""
    vae_done = _then_trim(bundle.release_vae) if release else bundle.offload_vae
    text_done = _then_trim(bundle.release_text_encoders) if release else bundle.offload_text_encoder
    lazy = cfg.cache_while_training is True or (cfg.cache_while_training == "auto" and not dist.active)
    latent_cache = text_cache = None
    if cfg.cache_latents in ("auto", True):
        latent_cache = LatentCache(dataset, bundle.vae_fingerprint(), cfg.cache_latents_to_disk)
        # the VAE runs in fp32: keep its batch small at high resolution (it is the peak otherwise)
        vae_batch = max(1, min(global_batch_size, (512 * 512) // (cfg.resolution ** 2)))
        if lazy:
            events.say(f"caching latents of {len(dataset)} image(s) as the first epoch needs them")
            latent_cache.defer(bundle.encode_images, vae_batch, device, vae_done)
        else:
            events.say(f"caching latents of {len(dataset)} image(s)")
            _build_latents_shared(latent_cache, bundle, device, dist, vae_batch)
            vae_done()
    use_text_cache = cfg.cache_text_encoder_outputs
    if use_text_cache == "auto":
        use_text_cache = dataset.caption_settings.is_fixed
    if use_text_cache and not cfg.train_text_encoder:
        text_cache = TextCache()
        captions = [dataset.fixed_caption(i) for i in range(len(dataset))]
        if lazy:  # encoded in the trainer's batch_loss, under the same autocast as below
            text_cache.defer(captions, bundle.encode_captions, on_complete=text_done)
        else:
            with autocast():  # shared out like the latents
                text_cache.build(captions, bundle.encode_captions, part=(dist.rank, dist.world_size))
                text_cache.outputs = dist.share_tensors(text_cache.outputs, device)
                text_cache.build(captions, bundle.encode_captions)
            text_done()
    if release:
        bundle.release_vae_decoder()  # nothing renders: only the VAE's encoder ever runs
    return latent_cache, text_cache


def _then_trim(release: Callable[[], None]) -> Callable[[], None]:
    """`release`, then the freed weights handed back to the system (the heap keeps them otherwise)."""
    def released() -> None:
        release()
        trim_heap()
    return released


def _build_latents_shared(cache: LatentCache, bundle: ModelBundle, device: torch.device, dist: Distributed,
                          vae_batch: int) -> None:
    """Every latent before the first step. Data parallel: each rank encodes a share, then all exchange
    them; a last pass encodes what no rank had (ranks that see different disk caches); for one process
    it finds nothing to do."""
    cache.build(bundle.encode_images, batch_size=vae_batch, device=device, part=(dist.rank, dist.world_size))
    cache.latents = dist.share_tensors(cache.latents, device)
    cache.build(bundle.encode_images, batch_size=vae_batch, device=device)
