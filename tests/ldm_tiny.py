"""A tiny real ldm LatentDiffusion (package `stable-diffusion-sdkit`: the classes the WebUI's SD1 model is
built from) with a WebUI-like CLIP text-encoder wrapper, and its single-file checkpoint."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import yaml
from torch import nn

from lora_trainer.tiny import tiny_original_config, tiny_text_encoder, tiny_tokenizer


def import_ldm():
    """Import ldm's LatentDiffusion the way the WebUI makes it importable; skip when sdkit is absent."""
    try:
        import pytorch_lightning.utilities.rank_zero as rank_zero
    except ImportError:
        pytest.skip("pytorch-lightning is not installed (needed by the ldm classes)")
    sys.modules.setdefault("pytorch_lightning.utilities.distributed", rank_zero)
    import diffusers  # noqa: F401 - let diffusers/transformers see the real (absent) torchvision first
    import transformers  # noqa: F401

    stub = None
    try:
        import torchvision.utils  # noqa: F401
    except Exception:  # noqa: BLE001 - ldm imports make_grid only for image logging
        stub = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
        stub[1].make_grid = lambda *a, **k: None
        stub[0].utils = stub[1]
        sys.modules["torchvision"], sys.modules["torchvision.utils"] = stub
    try:
        from ldm.models.diffusion.ddpm import LatentDiffusion
    except ImportError:
        pytest.skip("stable-diffusion-sdkit (package ldm) is not installed")
    finally:
        if stub is not None:  # ddpm keeps its make_grid; nobody else should find a fake torchvision
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.utils", None)
    return LatentDiffusion


class WebUITextEncoder(nn.Module):
    """Stands in for the WebUI's FrozenCLIPEmbedderWithCustomWords: `.wrapped.transformer` is a CLIPTextModel,
    `.wrapped.tokenizer` its tokenizer, and calling it with a list of prompts returns the conditioning."""

    def __init__(self, transformer: nn.Module, tokenizer, clip_skip: int = 1):
        super().__init__()
        self.wrapped = nn.Module()
        self.wrapped.transformer = transformer
        self.wrapped.tokenizer = tokenizer
        self.clip_skip = clip_skip

    def forward(self, texts: List[str]) -> torch.Tensor:
        from lora_trainer.models.diffusers_bundle import encode_clip

        ids = self.wrapped.tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids
        device = next(self.wrapped.transformer.parameters()).device
        return encode_clip(self.wrapped.transformer, ids.to(device), self.clip_skip)


def rerandomise_zeros(module: nn.Module, seed: int) -> None:
    """ldm zero-initialises output layers (a random UNet would output exactly 0): give them values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if name.endswith("bias") else 0.05))


def build_tiny_ldm(tmp: Path, seed: int = 0, original: Dict = None, tokenizer=None) -> nn.Module:
    """A tiny LatentDiffusion with the tiny config's architecture and a WebUI-like text encoder (its vocabulary
    that of `tokenizer`, by default the tiny one)."""
    LatentDiffusion = import_ldm()
    original = original or tiny_original_config()
    p = original["model"]["params"]
    unet = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {**p["unet_config"]["params"], "use_checkpoint": False}}
    first = {"target": "ldm.models.autoencoder.AutoencoderKL",
             "params": {"embed_dim": 4, "lossconfig": {"target": "torch.nn.Identity"},
                        "ddconfig": p["first_stage_config"]["params"]["ddconfig"]}}
    torch.manual_seed(seed)
    model = LatentDiffusion(unet_config=unet, first_stage_config=first, cond_stage_config="__is_unconditional__",
                            force_null_conditioning=True, conditioning_key="crossattn", linear_start=p["linear_start"],
                            linear_end=p["linear_end"], timesteps=p["timesteps"], scale_factor=p["scale_factor"],
                            image_size=8, channels=4, cond_stage_trainable=False, first_stage_key="jpg",
                            cond_stage_key="txt", use_ema=False, parameterization=p.get("parameterization", "eps"))
    rerandomise_zeros(model.model, seed)
    tokenizer = tokenizer or tiny_tokenizer(Path(tmp) / "ldm_tokenizer")
    model.cond_stage_model = WebUITextEncoder(tiny_text_encoder(tokenizer, seed), tokenizer)
    return model.eval()


def checkpoint_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's weights in the layout of a real SD1 single-file checkpoint."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith(("model.", "first_stage_model.")):
            sd[k] = v.clone()
    te = model.cond_stage_model.wrapped.transformer
    for k, v in te.state_dict().items():
        key = k if k.startswith("text_model.") else f"text_model.{k}"
        sd[f"cond_stage_model.transformer.{key}"] = v.clone()
    return sd


def save_single_file(model: nn.Module, path: Path) -> Path:
    """Write `<path>` (safetensors) and `<path>.yaml` (its original config) like a WebUI user has them."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state_dict(model), str(path))
    path.with_suffix(".yaml").write_text(yaml.safe_dump(tiny_original_config()), encoding="utf-8")
    return path
