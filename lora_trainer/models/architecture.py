"""Build a model family's architecture from its original (ldm-style) config, without any weight file:
on the `meta` device (memory planning, key-name checks) or randomly initialised (benchmarks)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .family import ModelFamily, nested_get

# The text towers of the released models, in transformers' CLIPTextConfig terms.
CLIP_L: Dict[str, Any] = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                              projection_dim=768)
# SD2's OpenCLIP ViT-H/14 as diffusers stores it: the last of its 24 layers is not used (penultimate layer)
OPEN_CLIP_H_PENULTIMATE: Dict[str, Any] = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                               num_hidden_layers=23, num_attention_heads=16,
                                               max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)
OPEN_CLIP_BIGG: Dict[str, Any] = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                      num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                                      projection_dim=1280)


def text_config(base: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None):
    """A CLIPTextConfig: `base` with the original config's `text_config` overrides (tiny test models)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{**base, **(overrides or {})})


def clip_text_config(original: Dict[str, Any]):
    """The CLIP text config of an SD1/SD2-style original config (its `text_config` override, else CLIP ViT-L/14)."""
    return text_config(CLIP_L, nested_get(original, "model", "params", "cond_stage_config", "params", "text_config",
                                          default={}))


def build_sd_architecture(original: Dict[str, Any], device: Optional[str] = "meta", seed: int = 0,
                          dtype: torch.dtype = torch.float32, family: Optional[ModelFamily] = None) -> Dict[str, Any]:
    """UNet, VAE and text encoder(s) of a family's original config (default SD1), on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    if family is None:
        from .sd1 import SD1Family

        family = SD1Family()
    torch.manual_seed(seed)
    unet_cfg = family.unet_config(original, {})
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, {}, image_size=512)
    with torch.device(device or "cpu"):
        parts = {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**vae_cfg)}
        parts.update(family.meta_text_encoders(original))
    for module in parts.values():
        module.to(dtype=dtype).eval()
    return parts
