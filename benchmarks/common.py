"""Helpers shared by the benchmark scripts (not part of the package)."""
from __future__ import annotations

import copy
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


def sdxl_bundle(tiny: bool, seed: int = 0):
    """(SDXLBundle, its original config) with the full (or, for a quick CPU check of this script, a tiny) SDXL architecture."""
    from lora_trainer.models import default_families
    from lora_trainer.models.architecture import build_sd_architecture
    from lora_trainer.models.loading import alphas_cumprod_from
    from lora_trainer.models.sdxl import SDXL_ORIGINAL_CONFIG
    from lora_trainer.tiny import tiny_tokenizer

    original = copy.deepcopy(SDXL_ORIGINAL_CONFIG)
    if tiny:
        p = original["model"]["params"]
        p["network_config"]["params"].update(model_channels=32, num_head_channels=16, transformer_depth=[1, 1, 1],
                                             context_dim=64, adm_in_channels=32 + 6 * 256)
        p["first_stage_config"]["params"]["ddconfig"].update(ch=32)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
        for e in p["conditioner_config"]["params"]["emb_models"][:2]:
            e["params"]["text_config"] = text
    family = default_families().get("sdxl")
    parts = build_sd_architecture(original, device=None, seed=seed, family=family)
    tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp(prefix="tok_")))
    bundle = family.make_bundle({**parts, "tokenizer": tokenizer, "tokenizer_2": tokenizer,
                                 "alphas_cumprod": alphas_cumprod_from(0.00085, 0.012, 1000),
                                 "prediction_type": "epsilon"}, "random-sdxl", 1)
    return bundle, original
