"""Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (penultimate layer), UNet with linear transformer
projections, 512 px epsilon models (2.0/2.1-base) and 768 px v-prediction models (2.0-v/2.1).

Epsilon or v? SD2 single files do not record it. In order, the first that answers decides:
1. the config key `prediction_type` (not `auto`);
2. an original config found for the file (`base_model_config`, or `<checkpoint>.yaml` beside it, as the
   WebUI uses): its `parameterization` ("v" in v2-inference-v.yaml; absent = epsilon);
3. the WebUI's own test (`is_using_v_parameterization_for_sd2` in modules/sd_models_config.py): at
   t = 999 on a constant latent, a v-model's output minus its input averages below -1 (it predicts about
   -x0), an epsilon model's does not. Using the same test as the WebUI means a LoRA is trained with the
   parameterization the WebUI will run the model with. (diffusers' `infer_diffusers_model_type` does not
   tell the two apart: it maps every SD2 file to the 2.1 768-v config.)
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Optional, Sequence

import torch

from ..network.checkpoint_keys import WeightRef, ldm_checkpoint_lora_keys
from .diffusers_bundle import DiffusersBundle
from .family import KL_F8_VAE_CONFIG, ModelFamily, nested_get
from .text_configs import OPEN_CLIP_H_PENULTIMATE, text_config

# v2-inference.yaml, as the diffusers converters read it. No `parameterization` on purpose: without an
# original config beside the file, the WebUI's test decides (see the module docstring).
SD2_ORIGINAL_CONFIG: Dict[str, Any] = {
    "model": {
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "scale_factor": 0.18215,
            "unet_config": {
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_head_channels": 64,
                    "use_spatial_transformer": True,
                    "use_linear_in_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 1024,
                    "legacy": False,
                }
            },
            "first_stage_config": KL_F8_VAE_CONFIG,
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                                  "params": {"freeze": True, "layer": "penultimate"}},
        }
    }
}

UNET_PREFIX = "model.diffusion_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.model."
TEXT_KEY = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"


def looks_like_v_prediction(unet: torch.nn.Module) -> bool:
    """The WebUI's SD2 test on a diffusers UNet: mean(output - input) at t = 999 on constant inputs < -1."""
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=context).sample
    return float((out - x).float().mean()) < -1


class SD2Family(ModelFamily):
    name = "sd2"
    title = "Stable Diffusion 2.x"
    sd_version = "SD2"
    modelspec_architecture = "stable-diffusion-v2-512/lora"
    text_encoder_prefixes = ("lora_te",)
    is_v2 = True
    bundle_class = DiffusersBundle

    def base_model_version(self, prediction_type: str) -> str:
        return "sd_v2_v" if prediction_type == "v_prediction" else "sd_v2"

    def modelspec_architecture_for(self, prediction_type: str) -> str:
        return "stable-diffusion-v2-768-v/lora" if prediction_type == "v_prediction" else self.modelspec_architecture

    def detect_single_file(self, keys: Iterable[str], shapes: Dict[str, Sequence[int]]) -> bool:
        keys = set(keys)
        return TEXT_KEY in keys and any(k.startswith(UNET_PREFIX) for k in keys)

    def detect_diffusers(self, unet_config: Any, text_encoder_config: Any) -> bool:
        if getattr(unet_config, "addition_embed_type", None) is not None:
            return False
        if getattr(unet_config, "cross_attention_dim", None) == 1024:
            return True
        # smaller SD2-shaped models: linear transformer projections and an OpenCLIP (gelu) text encoder
        return bool(getattr(unet_config, "use_linear_projection", False)) and \
            getattr(text_encoder_config, "hidden_act", "") == "gelu"

    def original_config(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, Any]:
        return copy.deepcopy(SD2_ORIGINAL_CONFIG)

    def single_file_prediction_type(self, params: Dict[str, Any], config_from_file: bool, unet: Any) -> str:
        if config_from_file or "parameterization" in params:
            return super().single_file_prediction_type(params, config_from_file, unet)
        return "v_prediction" if looks_like_v_prediction(unet) else "epsilon"

    def load_text_encoders(self, sd: Dict[str, Any], original: Dict[str, Any], tokenizer, source: str) -> Dict[str, Any]:
        from .text_encoders import load_open_clip_text_encoder, open_clip_tokenizer

        tokenizer = open_clip_tokenizer(tokenizer)
        cond = nested_get(original, "model", "params", "cond_stage_config", "params", default={}) or {}
        model = load_open_clip_text_encoder(sd, TEXT_ENCODER_PREFIX, tokenizer, f"{source} (text encoder)",
                                            cond.get("text_config"), penultimate=cond.get("layer", "last") == "penultimate")
        return {"text_encoder": model, "tokenizer": tokenizer}

    def meta_text_encoders(self, original: Dict[str, Any]) -> Dict[str, Any]:
        from transformers import CLIPTextModel

        overrides: Optional[Dict[str, Any]] = nested_get(original, "model", "params", "cond_stage_config", "params",
                                                         "text_config", default={})
        return {"text_encoder": CLIPTextModel(text_config(OPEN_CLIP_H_PENULTIMATE, overrides))}

    def checkpoint_lora_keys(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, WeightRef]:
        return ldm_checkpoint_lora_keys(shapes, UNET_PREFIX, self.unet_prefix, self.unet_kohya_path, [],
                                        [(TEXT_ENCODER_PREFIX, self.text_encoder_prefixes[0])])
