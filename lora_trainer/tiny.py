"""A tiny, randomly initialised SD1-shaped model and a synthetic image set: the demo's (tests use them too; no
downloads).

The tiny model is defined the way a real SD1 checkpoint is, by an ldm-style config, and converted to
diffusers with diffusers' own converters, so the same architecture exists in both layouts.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .models.sd1 import SD1_ORIGINAL_CONFIG
from .models.tokenizers import write_clip_tokenizer_files

TINY_TEXT_CONFIG: Dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=32)
TINY_MERGES = ["t h", "th e</w>", "a n", "an d</w>", "r e", "re d</w>", "o n"]


def tiny_original_config() -> Dict[str, Any]:
    """An ldm-style config for a tiny SD1-shaped model (3 UNet levels, attention on the first two)."""
    cfg = copy.deepcopy(SD1_ORIGINAL_CONFIG)
    p = cfg["model"]["params"]
    p["unet_config"]["params"].update(model_channels=32, channel_mult=[1, 2, 2], attention_resolutions=[1, 2],
                                      num_res_blocks=1, num_heads=2, context_dim=32, image_size=8)
    p["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1, resolution=64)
    p["cond_stage_config"]["params"] = {"text_config": dict(TINY_TEXT_CONFIG)}
    return cfg


def tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder, TINY_MERGES)
    return CLIPTokenizer.from_pretrained(str(folder))


def tiny_text_encoder(tokenizer, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            **TINY_TEXT_CONFIG)
    return CLIPTextModel(config).eval()


def tiny_unet_and_vae(seed: int = 0, original: Optional[Dict[str, Any]] = None):
    """Random diffusers UNet and VAE with the tiny config's architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    original = original or tiny_original_config()
    fake_sd: Dict[str, torch.Tensor] = {}  # the converters only read keys to guess an image size
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sfu.create_unet_diffusers_config_from_ldm(original, fake_sd, image_size=64))
    vae = AutoencoderKL(**sfu.create_vae_diffusers_config_from_ldm(original, fake_sd, image_size=64))
    return unet.eval(), vae.eval()


def build_tiny_sd1(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random SD1-shaped model as a diffusers folder (model_index.json, unet/, vae/, ...)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder / "_tok")
    text_encoder = tiny_text_encoder(tokenizer, seed)
    unet, vae = tiny_unet_and_vae(seed)
    p = tiny_original_config()["model"]["params"]
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=p["linear_start"], beta_end=p["linear_end"],
                              beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _remove_tree(folder / "_tok")
    return folder


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------- synthetic images
COLOURS: List[Tuple[str, Tuple[int, int, int]]] = [
    ("red", (220, 30, 30)), ("green", (30, 200, 60)), ("blue", (30, 60, 220)), ("yellow", (230, 210, 40)),
    ("purple", (140, 40, 180)), ("orange", (240, 140, 20)), ("cyan", (30, 200, 210)), ("black", (15, 15, 15)),
]


def make_shapes_dataset(folder: Path, n: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Coloured circles and squares on light backgrounds, captioned in metadata.csv (the demo's data)."""
    import random

    from PIL import Image, ImageDraw

    from .data.captions import write_metadata_csv

    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for i in range(n):
        name, rgb = COLOURS[i % len(COLOURS)]
        shape = "circle" if i % 2 == 0 else "square"
        img = Image.new("RGB", (size, size), (235, 235, 225))
        draw = ImageDraw.Draw(img)
        r = rng.randint(size // 5, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
        file = f"{i:02d}_{name}_{shape}.png"
        img.save(folder / file)
        rows[file] = f"a {name} {shape}, flat style"
    write_metadata_csv(folder / "metadata.csv", rows)
    return folder

