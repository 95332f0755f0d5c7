"""Stable Diffusion XL (base 1.0): two text encoders (CLIP ViT-L and OpenCLIP bigG, penultimate layers
concatenated; bigG's pooled projection), size/crop time ids, a 3-level UNet with deep transformers.

kohya SDXL LoRA names use the sgm (original) module paths: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`,
`lora_te1_text_model_encoder_layers_0_self_attn_q_proj` (CLIP-L), `lora_te2_...` (bigG).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, List, Sequence

from ..network.checkpoint_keys import WeightRef, ldm_checkpoint_lora_keys
from ..network.kohya_names import diffusers_to_ldm_unet_path
from ..network.unet_paths import diffusers_to_ldm_unet_module
from .family import KL_F8_VAE_CONFIG, ModelFamily, nested_get
from .sdxl_bundle import SDXLBundle
from .text_configs import CLIP_L, OPEN_CLIP_BIGG, text_config

# sd_xl_base.yaml, the parts the diffusers converters and this package read.
SDXL_ORIGINAL_CONFIG: Dict[str, Any] = {
    "model": {
        "params": {
            "scale_factor": 0.13025,
            "network_config": {
                "params": {
                    "adm_in_channels": 2816,
                    "num_classes": "sequential",
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4],
                    "num_head_channels": 64,
                    "use_spatial_transformer": True,
                    "use_linear_in_transformer": True,
                    "transformer_depth": [1, 2, 10],
                    "context_dim": 2048,
                    "legacy": False,
                }
            },
            "conditioner_config": {
                "params": {
                    "emb_models": [
                        {"input_key": "txt", "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                         "params": {"layer": "hidden", "layer_idx": 11}},
                        {"input_key": "txt", "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                         "params": {"arch": "ViT-bigG-14", "layer": "penultimate", "always_return_pooled": True}},
                        {"input_key": "original_size_as_tuple", "params": {"outdim": 256},
                         "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"},
                        {"input_key": "crop_coords_top_left", "params": {"outdim": 256},
                         "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"},
                        {"input_key": "target_size_as_tuple", "params": {"outdim": 256},
                         "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"},
                    ]
                }
            },
            "first_stage_config": KL_F8_VAE_CONFIG,
        }
    }
}

UNET_PREFIX = "model.diffusion_model."
TEXT_ENCODER_PREFIX = "conditioner.embedders.0.transformer."
TEXT_ENCODER_2_PREFIX = "conditioner.embedders.1.model."
DETECT_KEY = "conditioner.embedders.1.model.ln_final.weight"  # the WebUI's SDXL test (absent in the refiner)


def embedder_params(original: Dict[str, Any], index: int) -> Dict[str, Any]:
    models: List[Dict[str, Any]] = nested_get(original, "model", "params", "conditioner_config", "params",
                                              "emb_models", default=[]) or []
    return (models[index].get("params") or {}) if index < len(models) else {}


def time_embed_dim(original: Dict[str, Any]) -> int:
    """Width of one size/crop number's embedding (sgm's ConcatTimestepEmbedderND `outdim`)."""
    return int(embedder_params(original, 2).get("outdim", 256))


class SDXLFamily(ModelFamily):
    name = "sdxl"
    title = "Stable Diffusion XL"
    sd_version = "SDXL"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    text_encoder_prefixes = ("lora_te1", "lora_te2")
    gradient_checkpointing_by_default = True
    bundle_class = SDXLBundle

    def base_model_version(self, prediction_type: str) -> str:
        return "sdxl_base_v1-0"

    def detect_single_file(self, keys: Iterable[str], shapes: Dict[str, Sequence[int]]) -> bool:
        keys = set(keys)
        return DETECT_KEY in keys and any(k.startswith(TEXT_ENCODER_PREFIX) for k in keys)

    def detect_diffusers(self, unet_config: Any, text_encoder_config: Any) -> bool:
        return getattr(unet_config, "addition_embed_type", None) == "text_time"

    def unet_kohya_path(self, diffusers_path: str, layers_per_block: int) -> str:
        if ".attentions." in diffusers_path:
            return diffusers_to_ldm_unet_path(diffusers_path, layers_per_block)
        ldm = diffusers_to_ldm_unet_module(diffusers_path, layers_per_block)  # LoCon's ResNet and sampler layers
        if ldm is None:
            raise ValueError(f"no sgm path for the diffusers UNet module {diffusers_path!r}")
        return ldm

    def original_config(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, Any]:
        return copy.deepcopy(SDXL_ORIGINAL_CONFIG)

    def unet_config(self, original: Dict[str, Any], sd: Dict[str, Any]) -> Dict[str, Any]:
        config = super().unet_config(original, sd)
        # diffusers recognises SDXL by context_dim 2048/1280 only; say it for smaller SDXL-shaped models too
        config.update(class_embed_type=None, addition_embed_type="text_time",
                      addition_time_embed_dim=time_embed_dim(original))
        return config

    def load_text_encoders(self, sd: Dict[str, Any], original: Dict[str, Any], tokenizer, source: str) -> Dict[str, Any]:
        from .text_encoders import load_clip_text_encoder, load_open_clip_text_encoder, open_clip_tokenizer

        tokenizer_2 = open_clip_tokenizer(tokenizer)
        return {
            "text_encoder": load_clip_text_encoder(sd, TEXT_ENCODER_PREFIX, tokenizer, f"{source} (text encoder 1)",
                                                   embedder_params(original, 0).get("text_config")),
            "tokenizer": tokenizer,
            "text_encoder_2": load_open_clip_text_encoder(sd, TEXT_ENCODER_2_PREFIX, tokenizer_2,
                                                          f"{source} (text encoder 2)",
                                                          embedder_params(original, 1).get("text_config"),
                                                          with_projection=True),
            "tokenizer_2": tokenizer_2,
        }

    def load_diffusers_text_encoders(self, path: Any) -> Dict[str, Any]:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        parts = super().load_diffusers_text_encoders(path)
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2",
                                                                              local_files_only=True)
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True)
        return parts

    def meta_text_encoders(self, original: Dict[str, Any]) -> Dict[str, Any]:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return {"text_encoder": CLIPTextModel(text_config(CLIP_L, embedder_params(original, 0).get("text_config"))),
                "text_encoder_2": CLIPTextModelWithProjection(
                    text_config(OPEN_CLIP_BIGG, embedder_params(original, 1).get("text_config")))}

    def checkpoint_lora_keys(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, WeightRef]:
        te1, te2 = self.text_encoder_prefixes
        # kohya SDXL names are the checkpoint's own sgm paths
        return ldm_checkpoint_lora_keys(shapes, UNET_PREFIX, self.unet_prefix, None,
                                        [(TEXT_ENCODER_PREFIX, te1)], [(TEXT_ENCODER_2_PREFIX, te2)])
