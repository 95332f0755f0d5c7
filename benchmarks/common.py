"""Helpers shared by the benchmark scripts (not part of the package)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def full_size_sd15_bundle(device: torch.device, seed: int = 0):
    """A DiffusersBundle with the full SD1.5 architecture and random weights (CLIP-L sized vocabulary)."""
    from lora_trainer.models import default_families
    from lora_trainer.models.architecture import build_sd_architecture
    from lora_trainer.models.diffusers_bundle import DiffusersBundle
    from lora_trainer.models.loading import alphas_cumprod_from
    from lora_trainer.models.sd1 import SD1_ORIGINAL_CONFIG
    from lora_trainer.tiny import tiny_tokenizer

    parts = build_sd_architecture(SD1_ORIGINAL_CONFIG, device=None, seed=seed)
    tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp(prefix="tok_")))
    return DiffusersBundle(default_families().get("sd1"), parts["unet"], parts["vae"], parts["text_encoder"],
                           tokenizer, alphas_cumprod_from(0.00085, 0.012, 1000), "epsilon", name="random-sd15")
