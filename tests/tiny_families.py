"""Tiny random SD2- and SDXL-shaped models, defined by original (ldm/sgm-style) configs like the real ones
and built with the families' own config code, saved as diffusers folders."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import torch

from lora_trainer.models.sd2 import SD2_ORIGINAL_CONFIG, SD2Family
from lora_trainer.models.sdxl import SDXL_ORIGINAL_CONFIG, SDXLFamily
from lora_trainer.tiny import tiny_original_config, tiny_tokenizer

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32)
TIME_DIM = 8  # per size/crop number (SDXL: 256)


def _vae_ddconfig() -> Dict[str, Any]:
    return copy.deepcopy(tiny_original_config()["model"]["params"]["first_stage_config"]["params"]["ddconfig"])


def tiny_sd2_config(parameterization: str = "eps", vocab_size: int = 0) -> Dict[str, Any]:
    """SD2-shaped: linear projections, head channels (not head counts), an OpenCLIP text tower (gelu)."""
    cfg = copy.deepcopy(SD2_ORIGINAL_CONFIG)
    p = cfg["model"]["params"]
    p["parameterization"] = parameterization
    p["unet_config"]["params"].update(model_channels=32, channel_mult=[1, 2, 2], attention_resolutions=[1, 2],
                                      num_res_blocks=1, num_head_channels=16, context_dim=32, image_size=8)
    p["first_stage_config"]["params"]["ddconfig"] = _vae_ddconfig()
    text = dict(TEXT, hidden_act="gelu")
    if vocab_size:
        text["vocab_size"] = vocab_size
    p["cond_stage_config"]["params"]["text_config"] = text
    return cfg


def tiny_sdxl_config(vocab_size: int = 0) -> Dict[str, Any]:
    """SDXL-shaped: no attention on the first level, 2 ResNets per level, depth-2 transformers, two text
    encoders (32 + 32 = 64 context), pooled 32 + 6 x 8 time ids = 80 `adm_in_channels`."""
    cfg = copy.deepcopy(SDXL_ORIGINAL_CONFIG)
    p = cfg["model"]["params"]
    p["network_config"]["params"].update(model_channels=32, channel_mult=[1, 2, 2], attention_resolutions=[2, 4],
                                         num_res_blocks=2, num_head_channels=16, transformer_depth=2, context_dim=64,
                                         adm_in_channels=32 + 6 * TIME_DIM)
    p["first_stage_config"]["params"]["ddconfig"] = _vae_ddconfig()
    embedders = p["conditioner_config"]["params"]["emb_models"]
    extra = {"vocab_size": vocab_size} if vocab_size else {}
    embedders[0]["params"]["text_config"] = dict(TEXT, hidden_act="quick_gelu", **extra)
    embedders[1]["params"]["text_config"] = dict(TEXT, hidden_act="gelu", **extra)
    for e in embedders[2:]:
        e["params"]["outdim"] = TIME_DIM
    return cfg


def _token_ids(tokenizer) -> Dict[str, int]:
    return dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def _random_parts(family, original: Dict[str, Any], seed: int):
    from lora_trainer.models.architecture import build_sd_architecture

    parts = build_sd_architecture(original, device=None, seed=seed, family=family)
    return parts


def _scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type, clip_sample=False, steps_offset=1)


def build_tiny_sd2(folder: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """A tiny SD2-shaped diffusers folder (tokenizer padded with "!" like SD2's)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    base = tiny_tokenizer(folder.parent / f"{folder.name}_tok")
    tokenizer = CLIPTokenizer.from_pretrained(base.name_or_path, pad_token="!")
    original = tiny_sd2_config("v" if prediction_type == "v_prediction" else "eps")
    original["model"]["params"]["cond_stage_config"]["params"]["text_config"].update(_token_ids(tokenizer))
    parts = _random_parts(SD2Family(), original, seed)
    pipe = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tokenizer,
                                   unet=parts["unet"], scheduler=_scheduler(prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL-shaped diffusers folder (text_encoder_2 with projection, tokenizer_2 padded with "!")."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}_tok")
    tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer.name_or_path, pad_token="!")
    original = tiny_sdxl_config()
    for i, tok in enumerate((tokenizer, tokenizer_2)):
        original["model"]["params"]["conditioner_config"]["params"]["emb_models"][i]["params"]["text_config"].update(
            _token_ids(tok))
    parts = _random_parts(SDXLFamily(), original, seed)
    pipe = StableDiffusionXLPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                     text_encoder_2=parts["text_encoder_2"], tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=parts["unet"], scheduler=_scheduler("epsilon"))
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
