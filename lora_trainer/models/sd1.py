"""Stable Diffusion 1.x: CLIP ViT-L/14 text encoder, 4-level UNet with 1x1-conv transformer projections."""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Sequence

from ..network.checkpoint_keys import WeightRef, ldm_checkpoint_lora_keys
from .diffusers_bundle import DiffusersBundle
from .family import KL_F8_VAE_CONFIG, ModelFamily, nested_get
from .text_configs import clip_text_config

# The public v1-inference settings, as the diffusers converters read them.
SD1_ORIGINAL_CONFIG: Dict[str, Any] = {
    "model": {
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "scale_factor": 0.18215,
            "parameterization": "eps",
            "unet_config": {
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_heads": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 768,
                    "use_linear_in_transformer": False,
                    "legacy": False,
                }
            },
            "first_stage_config": KL_F8_VAE_CONFIG,
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
        }
    }
}

UNET_KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
UNET_PREFIX = "model.diffusion_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


class SD1Family(ModelFamily):
    name = "sd1"
    title = "Stable Diffusion 1.x"
    sd_version = "SD1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    text_encoder_prefixes = ("lora_te",)
    bundle_class = DiffusersBundle

    def base_model_version(self, prediction_type: str) -> str:
        return "sd_v1"

    def detect_single_file(self, keys: Iterable[str], shapes: Dict[str, Sequence[int]]) -> bool:
        keys = set(keys)
        has_clip = TEXT_KEY in keys or "cond_stage_model.transformer.embeddings.token_embedding.weight" in keys
        return has_clip and any(k.startswith("model.diffusion_model.") for k in keys)

    def detect_diffusers(self, unet_config: Any, text_encoder_config: Any) -> bool:
        # SD2 (1024) and SDXL (2048) register their own families; every other single-encoder model is SD1-shaped
        return getattr(unet_config, "cross_attention_dim", 768) not in (1024, 2048) and \
            getattr(unet_config, "addition_embed_type", None) is None

    def original_config(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, Any]:
        return copy.deepcopy(SD1_ORIGINAL_CONFIG)

    def load_text_encoders(self, sd: Dict[str, Any], original: Dict[str, Any], tokenizer, source: str) -> Dict[str, Any]:
        from .text_encoders import load_clip_text_encoder

        overrides = nested_get(original, "model", "params", "cond_stage_config", "params", "text_config", default={})
        return {"text_encoder": load_clip_text_encoder(sd, TEXT_ENCODER_PREFIX, tokenizer, f"{source} (text encoder)",
                                                       overrides),
                "tokenizer": tokenizer}

    def meta_text_encoders(self, original: Dict[str, Any]) -> Dict[str, Any]:
        from transformers import CLIPTextModel

        return {"text_encoder": CLIPTextModel(clip_text_config(original))}

    def checkpoint_lora_keys(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, WeightRef]:
        return ldm_checkpoint_lora_keys(shapes, UNET_PREFIX, self.unet_prefix, self.unet_kohya_path,
                                        [(TEXT_ENCODER_PREFIX, self.text_encoder_prefixes[0])])
