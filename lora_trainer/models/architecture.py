"""Build a model family's architecture from its original (ldm-style) config, without any weight file:
on the `meta` device (memory planning, key-name checks) or randomly initialised (benchmarks)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .family import nested_get


def clip_text_config(original: Dict[str, Any], vocab_size: int = 49408, hidden_size: int = 768,
                     layers: int = 12, intermediate: int = 3072):
    """The CLIP text config of an original config (its `text_config` override, else CLIP ViT-L/14)."""
    from transformers import CLIPTextConfig

    params = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=hidden_size // 64, max_position_embeddings=77,
                  hidden_act="quick_gelu", projection_dim=hidden_size)
    params.update(nested_get(original, "model", "params", "cond_stage_config", "params", "text_config",
                             default={}) or {})
    return CLIPTextConfig(**params)


def build_sd_architecture(original: Dict[str, Any], device: Optional[str] = "meta", seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> Dict[str, Any]:
    """UNet, VAE and CLIP text encoder of an SD1/SD2-style original config, on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, {}, image_size=512)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, {}, image_size=512)
    with torch.device(device or "cpu"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_encoder = CLIPTextModel(clip_text_config(original))
    for module in (unet, vae, text_encoder):
        module.to(dtype=dtype).eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}
