"""Tiny SD2 and SDXL models in the WebUI's in-memory layout, and their single-file checkpoints.

SD2: a real ldm `LatentDiffusion` (package stable-diffusion-sdkit) whose text encoder is ldm's real
`FrozenOpenCLIPEmbedder` around an open_clip-shaped text tower, wrapped like the WebUI wraps it.
SDXL: sgm (Stability-AI/generative-models) is not on PyPI, so `SGMLikeEngine` stands in for its
`DiffusionEngine` with the same structure and names: `model.diffusion_model` (ldm's UNetModel with sgm's
`label_emb`), `conditioner.embedders` (WebUI-wrapped CLIP-L and OpenCLIP bigG, then three size/crop
timestep embedders), `first_stage_model`, `scale_factor`, `apply_model(x, t, {"crossattn", "vector"})`.
The OpenCLIP text tower (`OpenCLIPTextTower`) mirrors open_clip 2.20's module names and maths.
"""
from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

import torch
import yaml
from torch import nn

from lora_trainer.tiny import tiny_tokenizer

from ldm_tiny import import_ldm, rerandomise_zeros
from tiny_families import TEXT, TIME_DIM, tiny_sd2_config, tiny_sdxl_config


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, mlp)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(mlp, width))]))

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTextTower(nn.Module):
    """open_clip's CLIP text tower (LND layout, causal mask, pooled at the highest token id)."""

    def __init__(self, vocab: int, width: int, heads: int, layers: int, mlp: int, ctx: int = 77, proj: int = 32):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(ctx, width) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp) for _ in range(layers)])
        self.transformer.grad_checkpointing = False
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, proj) * width ** -0.5)
        self.register_buffer("attn_mask", torch.full((ctx, ctx), float("-inf")).triu_(1), persistent=False)


def _tower(tokenizer, layers: int, seed: int) -> OpenCLIPTextTower:
    torch.manual_seed(seed)
    tower = OpenCLIPTextTower(len(tokenizer), TEXT["hidden_size"], TEXT["num_attention_heads"], layers,
                              TEXT["intermediate_size"], proj=TEXT["projection_dim"])
    rerandomise_zeros(tower, seed)  # MultiheadAttention starts with zero biases
    return tower.eval()


def _ids(tokenizer, texts: List[str], device) -> torch.Tensor:
    return tokenizer(list(texts), padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _import_ldm_open_clip_embedder():
    """ldm's FrozenOpenCLIPEmbedder; its module imports open_clip, which only its unused constructor needs."""
    import_ldm()
    stub = None
    if "open_clip" not in sys.modules:
        try:
            import open_clip  # noqa: F401
        except Exception:  # noqa: BLE001 - absent or broken here: the tower is built without it
            stub = sys.modules["open_clip"] = types.ModuleType("open_clip")
    try:
        from ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder
    finally:
        if stub is not None:
            sys.modules.pop("open_clip", None)
    return FrozenOpenCLIPEmbedder


class WebUIOpenCLIPEncoder(nn.Module):
    """Like the WebUI's FrozenOpenCLIPEmbedderWithCustomWords: `.wrapped` is ldm's FrozenOpenCLIPEmbedder."""

    def __init__(self, tower: OpenCLIPTextTower, tokenizer, layer: str = "penultimate"):
        super().__init__()
        cls = _import_ldm_open_clip_embedder()
        wrapped = cls.__new__(cls)
        nn.Module.__init__(wrapped)
        wrapped.model, wrapped.device, wrapped.max_length = tower, "cpu", 77
        wrapped.layer, wrapped.layer_idx = layer, 1 if layer == "penultimate" else 0
        self.wrapped = wrapped
        self.tokenizer = tokenizer

    def forward(self, texts: List[str]) -> torch.Tensor:
        return self.wrapped.encode_with_transformer(_ids(self.tokenizer, texts, self.wrapped.model.attn_mask.device))


def build_tiny_sd2_ldm(tmp: Path, seed: int = 0, parameterization: str = "eps", tokenizer=None) -> nn.Module:
    """A tiny SD2-shaped LatentDiffusion as the WebUI holds it (OpenCLIP text encoder, 3 layers, penultimate)."""
    from ldm_tiny import build_tiny_ldm

    tokenizer = tokenizer or tiny_tokenizer(Path(tmp) / "ldm_tokenizer")
    model = build_tiny_ldm(tmp, seed, original=tiny_sd2_config(parameterization), tokenizer=tokenizer)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer.name_or_path, pad_token="!")
    model.cond_stage_model = WebUIOpenCLIPEncoder(_tower(tokenizer, TEXT["num_hidden_layers"] + 1, seed), tokenizer)
    return model.eval()


def save_sd2_single_file(model: nn.Module, path: Path, parameterization: str = "eps") -> Path:
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("model.", "first_stage_model."))}
    for k, v in model.cond_stage_model.wrapped.model.state_dict().items():
        sd[f"cond_stage_model.model.{k}"] = v.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    path.with_suffix(".yaml").write_text(yaml.safe_dump(tiny_sd2_config(parameterization)), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- SDXL (sgm stand-in)
class TextEmbedder(nn.Module):
    input_key = "txt"
    is_trainable = False
    ucg_rate = 0.0
    legacy_ucg_val = None


class WebUICLIPForSDXL(TextEmbedder):
    """Like the WebUI's FrozenCLIPEmbedderForSDXLWithCustomWords: `.wrapped.transformer` is a CLIPTextModel;
    the output is the penultimate hidden state (sgm: layer "hidden", layer_idx 11 of 12)."""

    def __init__(self, transformer: nn.Module, tokenizer):
        super().__init__()
        self.wrapped = nn.Module()
        self.wrapped.transformer = transformer
        self.wrapped.tokenizer = tokenizer

    def forward(self, texts: List[str]) -> torch.Tensor:
        device = next(self.wrapped.transformer.parameters()).device
        out = self.wrapped.transformer(_ids(self.wrapped.tokenizer, texts, device), output_hidden_states=True)
        return out.hidden_states[-2]


class WebUIOpenCLIP2ForSDXL(TextEmbedder):
    """Like the WebUI's FrozenOpenCLIPEmbedder2WithCustomWords around sgm's FrozenOpenCLIPEmbedder2
    (layer penultimate, legacy False, always_return_pooled): returns (penultimate, pooled)."""

    def __init__(self, tower: OpenCLIPTextTower, tokenizer):
        super().__init__()
        self.wrapped = nn.Module()
        self.wrapped.model = tower
        self.tokenizer = tokenizer

    def forward(self, texts: List[str]):
        model = self.wrapped.model
        tokens = _ids(self.tokenizer, texts, model.attn_mask.device)
        x = (model.token_embedding(tokens) + model.positional_embedding).permute(1, 0, 2)
        for i, block in enumerate(model.transformer.resblocks):
            if i == len(model.transformer.resblocks) - 1:
                penultimate = x.permute(1, 0, 2)
            x = block(x, attn_mask=model.attn_mask)
        last = model.ln_final(x.permute(1, 0, 2))
        pooled = last[torch.arange(last.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
        return penultimate, pooled


class SizeEmbedder(nn.Module):
    """sgm's ConcatTimestepEmbedderND: each number -> a sinusoidal embedding of `outdim`, concatenated."""

    is_trainable = False
    ucg_rate = 0.0
    legacy_ucg_val = None

    def __init__(self, input_key: str, outdim: int):
        super().__init__()
        self.input_key = input_key
        self.outdim = outdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ldm.modules.diffusionmodules.util import timestep_embedding

        b = x.shape[0]
        return timestep_embedding(x.flatten(), self.outdim).reshape(b, -1)


class OpenAIWrapper(nn.Module):
    """sgm's OpenAIWrapper. ldm's SpatialTransformer (unlike sgm's) wants one context per block when its depth
    is above 1, so the one context is repeated here."""

    def __init__(self, diffusion_model: nn.Module, depth: int):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.depth = depth

    def forward(self, x, t, c):
        return self.diffusion_model(x, timesteps=t, context=[c.get("crossattn")] * self.depth, y=c.get("vector"))


class SGMLikeEngine(nn.Module):
    """The parts of sgm's DiffusionEngine (as the WebUI extends it) that training touches."""

    is_sdxl = True
    parameterization = "eps"

    def __init__(self, unet: nn.Module, conditioner: nn.Module, vae: nn.Module, scale_factor: float,
                 alphas_cumprod: torch.Tensor, depth: int):
        super().__init__()
        self.model = OpenAIWrapper(unet, depth)
        self.conditioner = conditioner
        self.first_stage_model = vae
        self.scale_factor = scale_factor
        self.alphas_cumprod = alphas_cumprod

    def apply_model(self, x, t, cond):
        return self.model(x, t, cond)

    def encode_first_stage(self, x):
        return self.scale_factor * self.first_stage_model.encode(x).sample()


def build_tiny_sdxl_sgm(tmp: Path, seed: int = 0, tokenizer=None) -> SGMLikeEngine:
    import_ldm()
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from lora_trainer.models.loading import alphas_cumprod_from
    from lora_trainer.tiny import tiny_text_encoder

    p = tiny_sdxl_config()["model"]["params"]
    net = dict(p["network_config"]["params"])
    adm = net.pop("adm_in_channels")
    net.pop("num_classes")
    net["context_dim"] = [net["context_dim"]] * net["transformer_depth"]  # ldm wants one per block when depth > 1
    torch.manual_seed(seed)
    unet = UNetModel(**net, image_size=8, use_checkpoint=False)
    ted = unet.time_embed[0].out_features
    unet.num_classes = "sequential"
    unet.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm, ted), nn.SiLU(), nn.Linear(ted, ted)))
    rerandomise_zeros(unet, seed)
    vae = AutoencoderKL(ddconfig=p["first_stage_config"]["params"]["ddconfig"], embed_dim=4,
                        lossconfig={"target": "torch.nn.Identity"})
    tokenizer = tokenizer or tiny_tokenizer(Path(tmp) / "sgm_tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer.name_or_path, pad_token="!")
    clip_l = tiny_text_encoder(tokenizer, seed)
    assert isinstance(clip_l, CLIPTextModel)
    conditioner = nn.Module()
    conditioner.embedders = nn.ModuleList([
        WebUICLIPForSDXL(clip_l, tokenizer), WebUIOpenCLIP2ForSDXL(_tower(tokenizer_2, 2, seed + 1), tokenizer_2),
        SizeEmbedder("original_size_as_tuple", TIME_DIM), SizeEmbedder("crop_coords_top_left", TIME_DIM),
        SizeEmbedder("target_size_as_tuple", TIME_DIM)])
    return SGMLikeEngine(unet, conditioner, vae, p["scale_factor"], alphas_cumprod_from(0.00085, 0.012, 1000),
                         len(net["context_dim"])).eval()


def save_sdxl_single_file(model: SGMLikeEngine, path: Path) -> Path:
    """sgm-layout keys, like a real SDXL checkpoint, and the tiny original config beside it."""
    from safetensors.torch import save_file

    sd: Dict[str, torch.Tensor] = {}
    for k, v in model.model.diffusion_model.state_dict().items():
        sd[f"model.diffusion_model.{k}"] = v.clone()
    for k, v in model.first_stage_model.state_dict().items():
        sd[f"first_stage_model.{k}"] = v.clone()
    for k, v in model.conditioner.embedders[0].wrapped.transformer.state_dict().items():
        sd[f"conditioner.embedders.0.transformer.{k if k.startswith('text_model.') else 'text_model.' + k}"] = v.clone()
    for k, v in model.conditioner.embedders[1].wrapped.model.state_dict().items():
        sd[f"conditioner.embedders.1.model.{k}"] = v.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    path.with_suffix(".yaml").write_text(yaml.safe_dump(tiny_sdxl_config()), encoding="utf-8")
    return path
