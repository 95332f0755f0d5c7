"""Build a model family's architecture from its original (ldm-style) config, without any weight file:
on the `meta` device (memory planning, key-name checks) or randomly initialised (benchmarks)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .family import ModelFamily
from .sd1 import SD1Family


def build_sd_architecture(original: Dict[str, Any], device: Optional[str] = "meta", seed: int = 0,
                          dtype: torch.dtype = torch.float32, family: Optional[ModelFamily] = None) -> Dict[str, Any]:
    """UNet, VAE and text encoder(s) of a family's original config (default SD1), on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    family = family or SD1Family()
    torch.manual_seed(seed)
    unet_cfg = family.unet_config(original, {})
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, {}, image_size=512)
    with torch.device(device or "cpu"):
        parts = {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**vae_cfg)}
        parts.update(family.meta_text_encoders(original))
    for module in parts.values():
        module.to(dtype=dtype).eval()
    return parts
