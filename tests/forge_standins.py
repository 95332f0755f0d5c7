"""Stand-ins for Forge Neo's classes, small enough for CI. They are NOT Forge: each reproduces only the
properties of its Forge counterpart that in-place training depends on (the real proof is
tools/forge_e2e.py against a running Forge Neo):

- `StandInForge{Linear,Conv2d,LayerNorm,GroupNorm}`: subclasses of the torch layers that cast their
  weights to the input's dtype on every call (Forge's `backend.operations.ForgeOperations`, manual cast);
- every weight is created under `torch.inference_mode` (Forge's loader), the UNet's in fp16 storage;
- `StandInBasicTransformerBlock` / `StandInResBlock` add in place (`x += n`, `h += emb_out`) like
  `backend.nn.unet`, with Forge's attribute names and call signatures (`transformer_options`);
- `StandInForgeEngine`: `forge_objects.unet.model.diffusion_model` (ldm module names), a predictor with
  `alphas_cumprod`, `forge_objects.clip.cond_stage_model.clip_l/clip_g.transformer` (transformers CLIP),
  text processing engines, and `encode_first_stage` under inference mode (`backend.diffusion_engine`).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn


def standin_fetch(layer: nn.Module, x: torch.Tensor):
    """The stand-in layers' per-call cast (what `forge_weights` does with Forge's own operations)."""
    bias = None if layer.bias is None else layer.bias.to(x.device, x.dtype)
    return layer.weight.to(x.device, x.dtype), bias


class StandInForgeLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, *standin_fetch(self, x))


class StandInForgeConv2d(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, *standin_fetch(self, x))


class StandInForgeLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, *standin_fetch(self, x), self.eps)


class StandInForgeGroupNorm(nn.GroupNorm):
    def forward(self, x):
        return F.group_norm(x, self.num_groups, *standin_fetch(self, x), self.eps)


class StandInCrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: Optional[int] = None, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.to_q = StandInForgeLinear(dim, dim, bias=False)
        self.to_k = StandInForgeLinear(context_dim or dim, dim, bias=False)
        self.to_v = StandInForgeLinear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Sequential(StandInForgeLinear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context if value is None else value)
        b, n, d = q.shape
        q, k, v = (t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.to_out(out)


class StandInGEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = StandInForgeLinear(dim, inner * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class StandInFeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(StandInGEGLU(dim, dim * 2), nn.Dropout(0.0), StandInForgeLinear(dim * 2, dim))

    def forward(self, x):
        return self.net(x)


class StandInBasicTransformerBlock(nn.Module):
    """Forge's block: each branch added into its input IN PLACE."""

    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.ff_in, self.is_res, self.disable_self_attn = False, True, False
        self.attn1 = StandInCrossAttention(dim)
        self.attn2 = StandInCrossAttention(dim, context_dim)
        self.norm1, self.norm2, self.norm3 = (StandInForgeLayerNorm(dim) for _ in range(3))
        self.ff = StandInFeedForward(dim)

    def forward(self, x, context=None, transformer_options={}):
        x += self.attn1(self.norm1(x), transformer_options=transformer_options)
        x += self.attn2(self.norm2(x), context=context, transformer_options=transformer_options)
        x_skip = x
        x = self.ff(self.norm3(x))
        x += x_skip
        return x


class StandInSpatialTransformer(nn.Module):
    def __init__(self, ch: int, context_dim: int):
        super().__init__()
        self.norm = StandInForgeGroupNorm(8, ch, eps=1e-6)
        self.proj_in = StandInForgeConv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([StandInBasicTransformerBlock(ch, context_dim)])
        self.proj_out = StandInForgeConv2d(ch, ch, 1)

    def forward(self, x, context=None, transformer_options={}):
        b, c, h, w = x.shape
        x_in = x
        x = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2).contiguous()
        for block in self.transformer_blocks:
            x = block(x, context=context, transformer_options=transformer_options)
        x = x.transpose(1, 2).reshape(b, c, h, w).contiguous()
        return self.proj_out(x) + x_in


class StandInResBlock(nn.Module):
    """Forge's ResBlock layout; the timestep embedding is added IN PLACE."""

    def __init__(self, ch: int, emb: int, out: int):
        super().__init__()
        self.updown, self.skip_t_emb, self.use_scale_shift_norm, self.exchange_temb_dims = False, False, False, False
        self.in_layers = nn.Sequential(StandInForgeGroupNorm(8, ch), nn.SiLU(), StandInForgeConv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), StandInForgeLinear(emb, out))
        self.out_layers = nn.Sequential(StandInForgeGroupNorm(8, out), nn.SiLU(), nn.Dropout(0.0),
                                        StandInForgeConv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if ch == out else StandInForgeConv2d(ch, out, 1)

    def forward(self, x, emb, transformer_options={}):
        h = self.in_layers(x)
        h += self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class StandInTimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None, transformer_options={}):
        for layer in self:
            if isinstance(layer, StandInResBlock):
                x = layer(x, emb, transformer_options)
            elif isinstance(layer, StandInSpatialTransformer):
                x = layer(x, context, transformer_options)
            else:
                x = layer(x)
        return x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class StandInUNet(nn.Module):
    """A one-level ldm UNet (input_blocks / middle_block / output_blocks, num_res_blocks 1) of the stand-ins."""

    def __init__(self, ch: int = 32, context_dim: int = 32, adm_in_channels: Optional[int] = None):
        super().__init__()
        emb = ch * 4
        self.model_channels, self.num_res_blocks = ch, [1]
        self.time_embed = nn.Sequential(StandInForgeLinear(ch, emb), nn.SiLU(), StandInForgeLinear(emb, emb))
        self.label_emb = None if adm_in_channels is None else nn.Sequential(nn.Sequential(
            StandInForgeLinear(adm_in_channels, emb), nn.SiLU(), StandInForgeLinear(emb, emb)))
        seq = StandInTimestepEmbedSequential
        self.input_blocks = nn.ModuleList([seq(StandInForgeConv2d(4, ch, 3, padding=1)),
                                           seq(StandInResBlock(ch, emb, ch), StandInSpatialTransformer(ch, context_dim))])
        self.middle_block = seq(StandInResBlock(ch, emb, ch), StandInSpatialTransformer(ch, context_dim),
                                StandInResBlock(ch, emb, ch))
        self.output_blocks = nn.ModuleList([seq(StandInResBlock(2 * ch, emb, ch), StandInSpatialTransformer(ch, context_dim))
                                            for _ in range(2)])
        self.out = nn.Sequential(StandInForgeGroupNorm(8, ch), nn.SiLU(), StandInForgeConv2d(ch, 4, 3, padding=1))

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context, transformer_options)
            hs.append(h)
        h = self.middle_block(h, emb, context, transformer_options)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, transformer_options)
        return self.out(h).type(x.dtype)


def as_inference_weights(module: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Every parameter replaced by a copy made under torch.inference_mode (as Forge's loader makes them; they
    keep requires_grad=True, as Forge's text encoders do, until someone sets it off)."""
    with torch.inference_mode():
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[name] = nn.Parameter(p.detach().to(dtype or p.dtype).clone(), p.requires_grad)
    return module


class StandInTextEngine:
    """Forge's ClassicTextProcessingEngine, reduced: tokenise to 77, run the CLIP model, final layer norm."""

    def __init__(self, text_encoder: nn.Module, tokenizer, return_pooled: bool = False):
        self.text_encoder, self.tokenizer, self.return_pooled = text_encoder, tokenizer, return_pooled

    def process_texts(self, texts: List[str]):
        return None, max(len(self.tokenizer(t).input_ids) - 2 for t in texts)

    def __call__(self, texts: List[str]):
        ids = self.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        out = self.text_encoder.transformer(ids, output_hidden_states=True)
        model = self.text_encoder.transformer
        z = getattr(model, "text_model", model).final_layer_norm(out.hidden_states[-1])  # transformers 4 | 5
        return (z, out.pooler_output) if self.return_pooled else z


class StandInIntegratedCLIP(nn.Module):
    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer


class StandInJointTextEncoder(nn.Module):
    """Forge's JointTextEncoder: a plain module holding clip_l / clip_g (not an nn.ModuleDict)."""

    def __init__(self, encoders):
        super().__init__()
        for name, module in encoders.items():
            self.add_module(name, module)


class StandInVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 8, stride=8)


class StandInForgeEngine:
    """`shared.sd_model` of Forge Neo (SD1.5 shape; `sdxl=True`: SDXL shape with two CLIPs and size embedder)."""

    def __init__(self, tokenizer, text_encoders: List[nn.Module], sdxl: bool = False, seed: int = 0):
        torch.manual_seed(seed)
        width = text_encoders[0].config.hidden_size
        self.is_sd1, self.is_sdxl = not sdxl, sdxl
        self.embedder = lambda t: timestep_embedding(t, 8)  # Forge's Timestep(256), smaller
        adm = (text_encoders[-1].config.hidden_size + 6 * 8) if sdxl else None
        unet = as_inference_weights(StandInUNet(context_dim=width * len(text_encoders), adm_in_channels=adm),
                                    torch.float16)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
        predictor = SimpleNamespace(alphas_cumprod=torch.cumprod(1 - betas, 0), prediction_type="epsilon")
        unet.requires_grad_(False)  # as Forge's KModel does; the text encoders keep requires_grad=True
        kmodel = SimpleNamespace(diffusion_model=unet, predictor=predictor, computation_dtype=torch.float32)
        clips = {key: StandInIntegratedCLIP(as_inference_weights(te)) for key, te in zip(("clip_l", "clip_g"), text_encoders)}
        self.vae = as_inference_weights(StandInVAE())
        self.forge_objects = SimpleNamespace(
            unet=SimpleNamespace(model=kmodel, load_device=torch.device("cpu")),
            clip=SimpleNamespace(cond_stage_model=StandInJointTextEncoder(clips), patcher=None),
            vae=SimpleNamespace(first_stage_model=self.vae))
        engines = [StandInTextEngine(clip, tokenizer, return_pooled=key == "clip_g") for key, clip in clips.items()]
        if sdxl:
            self.text_processing_engine_l, self.text_processing_engine_g = engines
        else:
            self.text_processing_engine = engines[0]

    @torch.inference_mode()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encoder(x) * 0.18215

