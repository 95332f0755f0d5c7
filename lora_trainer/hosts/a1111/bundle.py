"""A1111Bundle: train the model the WebUI already holds in memory (ldm `LatentDiffusion`: SD1.x, SD2.x;
SDXL's sgm model is `A1111SDXLBundle`, a subclass).

Why LoRA layers go on the ldm modules themselves (and not on diffusers modules sharing storage): the
WebUI's model is used as it is, so no second set of modules, no key conversion at load and no risk of
two objects disagreeing about one weight. peft wraps each target `nn.Linear`/1x1 `nn.Conv2d` in place;
the wrapped layer keeps its parameter objects, so every base weight keeps its storage and dtype (fp16
when the WebUI runs half). `restore()` takes every wrapper and every flag this bundle changed back out.

Conditioning comes from the WebUI's own text-encoder path (`sd_model.cond_stage_model(texts)`), so
its tokenisation, emphasis syntax and clip-skip setting are exactly what txt2img uses; noise
predictions come from `sd_model.apply_model`. kohya names are made from the ldm module paths mapped to
the diffusers paths that SD1/SD2 kohya files use (SDXL's family maps them on to sgm paths).

Text encoders: transformers' CLIP (SD1, SDXL's first) gets peft layers like a diffusers model; OpenCLIP
(SD2, SDXL's bigG) packs q/k/v into one `nn.MultiheadAttention.in_proj_weight`, so its attention gets
q/k/v/out LoRA pairs on the packed weight (lora/packed_attention.py) and its MLP plain LoRA layers,
named as kohya names the converted transformers encoder (`..._self_attn_q_proj`, `..._mlp_fc1`).

This module never imports the WebUI (`modules.*`): it only uses the model object it is given.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...errors import ModelLoadError
from ...network.kohya_names import kohya_name, open_clip_text_encoder_path, text_encoder_path
from ...network.network import NetworkComponent
from ...network.targets import open_clip_targets, text_encoder_targets, unet_conv_targets, unet_targets
from ...network.unet_paths import ldm_to_diffusers_unet_module
from ...models.bundle import Conditioning, ModelBundle
from ...models.family import ModelFamily

CHECKPOINTED_BLOCKS = ("BasicTransformerBlock", "ResBlock")
TEXT_BLOCKS = ("CLIPEncoderLayer", "ResidualAttentionBlock")  # transformers CLIP, open_clip


def diffusers_unet_path(ldm_path: str, layers: int) -> str:
    """The diffusers path of an ldm UNet module: attention blocks, and LoCon's ResNet and sampler layers."""
    path = ldm_to_diffusers_unet_module(ldm_path, layers)
    if path is None:
        raise ValueError(f"no diffusers path for the ldm UNet module {ldm_path!r}")
    return path


def find_open_clip_model(cond_stage_model: nn.Module) -> Optional[nn.Module]:
    """The open_clip text tower inside a WebUI text-encoder wrapper (SD2), or None."""
    for path in ("wrapped.model", "model"):
        try:
            model = cond_stage_model.get_submodule(path)
        except AttributeError:
            continue
        if hasattr(model, "token_embedding") and hasattr(getattr(model, "transformer", None), "resblocks"):
            return model
    return None


def clip_component(role: str, model: nn.Module, prefix: str) -> NetworkComponent:
    """LoRA targets and kohya names of a transformers CLIP text model."""
    return NetworkComponent(role, model, text_encoder_targets(model), lambda p: kohya_name(prefix, text_encoder_path(p)))


def open_clip_component(role: str, tower: nn.Module, prefix: str, layers: int) -> NetworkComponent:
    """LoRA targets (attention and MLP of the first `layers` blocks) and kohya names of an open_clip text tower."""
    return NetworkComponent(role, tower, open_clip_targets(tower, layers),
                         lambda p: kohya_name(prefix, open_clip_text_encoder_path(p)))


def find_clip_text_model(cond_stage_model: nn.Module) -> nn.Module:
    """The transformers CLIPTextModel inside the WebUI's SD1 text-encoder wrapper."""
    for path in ("wrapped.transformer", "transformer"):
        try:
            return cond_stage_model.get_submodule(path)
        except AttributeError:
            continue
    raise ModelLoadError("the loaded model's text encoder is not a CLIP text model this trainer knows "
                         f"({type(cond_stage_model).__name__})")


class A1111Bundle(ModelBundle):
    """An ldm LatentDiffusion (the WebUI's `shared.sd_model`) trained in place."""

    def __init__(self, sd_model: nn.Module, family: ModelFamily, name: str = "", offload: bool = False):
        self.sd_model = sd_model
        self.family = family
        self.name = name
        self.unet = sd_model.model.diffusion_model
        self.text_module = self._text_module()  # what holds every text-encoder weight
        self.text_encoder = self._find_text_encoder()
        self.vae = sd_model.first_stage_model
        self.prediction_type = "v_prediction" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"
        self.alphas_cumprod = sd_model.alphas_cumprod.detach().float().cpu().clone()
        self.scale_factor = float(sd_model.scale_factor)
        self.latent_channels = int(getattr(sd_model, "channels", 4))
        ddconfig = getattr(self.vae, "encoder", None)
        self.vae_factor = 2 ** (len(getattr(ddconfig, "down", [])) - 1) if ddconfig is not None else 8
        self.device = next(self.unet.parameters()).device
        self.base_dtype = next(self.unet.parameters()).dtype
        self._offload = offload  # move the VAE / frozen text encoder to the CPU while training
        self._saved: Optional[Dict[str, Any]] = None
        self._checkpointed: List[nn.Module] = []
        self.sampler = None  # set by the WebUI glue: renders SamplePrompts through the WebUI's txt2img

    def _text_module(self) -> nn.Module:
        return self.sd_model.cond_stage_model

    def _find_text_encoder(self) -> Optional[nn.Module]:
        return find_open_clip_model(self.text_module) or find_clip_text_model(self.text_module)

    @property
    def fixed_placement(self) -> Tuple[torch.device, torch.dtype]:
        """The WebUI decides device and weight dtype; the trainer follows."""
        return self.device, self.base_dtype

    # ------------------------------------------------------------------ LoRA
    def network_components(self, train_text_encoder: bool) -> List[NetworkComponent]:
        fam = self.family
        layers = self._layers_per_block()
        comps = [NetworkComponent(
            "unet", self.unet, unet_targets(self.unet),
            lambda p: kohya_name(fam.unet_prefix, fam.unet_kohya_path(diffusers_unet_path(p, layers), layers)),
            unet_conv_targets(self.unet))]
        return comps + (self.text_encoder_components() if train_text_encoder else [])

    def text_encoder_components(self) -> List[NetworkComponent]:
        """SD1: the CLIP text model. SD2: the open_clip tower's blocks that the conditioning uses (all but the
        last `layer_idx`: the penultimate layer for SD2, so 23 of 24 as in diffusers' SD2 encoder)."""
        prefix = self.family.text_encoder_prefixes[0]
        tower = find_open_clip_model(self.text_module)
        if tower is None:
            return [clip_component("text_encoder", self.text_encoder, prefix)]
        skipped = int(getattr(getattr(self.text_module, "wrapped", None), "layer_idx", 0) or 0)
        return [open_clip_component("text_encoder", tower, prefix, len(tower.transformer.resblocks) - skipped)]

    def _layers_per_block(self) -> int:
        nrb = getattr(self.unet, "num_res_blocks", 2)
        return int(nrb[0] if isinstance(nrb, (list, tuple)) else nrb)

    # ------------------------------------------------------------------ setup / restore
    def prepare(self, device: torch.device, base_dtype: torch.dtype, gradient_checkpointing: bool,
                train_text_encoder: bool) -> None:
        """Freeze in place; nothing is moved or cast (the WebUI's placement is kept)."""
        model = self.sd_model
        self._saved = {
            "requires_grad": {id(p): p.requires_grad for p in model.parameters()},
            "params": list(model.parameters()),
            "training": {id(m): m.training for m in model.modules()},
            "modules": list(model.modules()),
            "devices": {"vae": next(self.vae.parameters()).device,
                        "text": next(self.text_module.parameters()).device},
        }
        model.requires_grad_(False)
        model.eval()
        if gradient_checkpointing:
            self.enable_gradient_checkpointing(train_text_encoder)

    def enable_gradient_checkpointing(self, text_encoder: bool) -> None:
        self._enable_checkpointing(self.unet)
        if text_encoder:
            for comp in self.text_encoder_components():
                self._enable_checkpointing(comp.module, TEXT_BLOCKS)

    def _enable_checkpointing(self, root: nn.Module, names: Sequence[str] = CHECKPOINTED_BLOCKS) -> None:
        """Non-reentrant activation checkpointing on each block, as an instance attribute (undone by restore)."""
        from torch.utils.checkpoint import checkpoint

        for module in root.modules():
            if type(module).__name__ in names and "forward" not in module.__dict__:
                original = module.forward

                def forward(*args, _original=original, **kwargs):
                    if torch.is_grad_enabled():
                        return checkpoint(_original, *args, use_reentrant=False, **kwargs)
                    return _original(*args, **kwargs)

                module.forward = forward
                self._checkpointed.append(module)

    def restore(self) -> None:
        """Undo prepare(): flags, modes, checkpointing and the VAE's device, exactly as they were."""
        for module in self._checkpointed:
            module.__dict__.pop("forward", None)
        self._checkpointed = []
        saved, self._saved = self._saved, None
        if not saved:
            return
        for p in saved["params"]:
            p.requires_grad_(saved["requires_grad"][id(p)])
        for m in saved["modules"]:
            m.training = saved["training"][id(m)]
        for module, key in ((self.vae, "vae"), (self.text_module, "text")):
            if next(module.parameters()).device != saved["devices"][key]:
                module.to(saved["devices"][key])

    def offload_vae(self) -> None:
        if self._offload:
            self.vae.to("cpu")

    def offload_text_encoder(self) -> None:
        if self._offload:
            self.text_module.to("cpu")


    # ------------------------------------------------------------------ compute
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        posterior = self.sd_model.encode_first_stage(pixels.to(p.device, p.dtype))
        latents = posterior.mode() if hasattr(posterior, "mode") else posterior
        return (latents.float() * self.scale_factor).to(self.device)

    def encode_captions(self, captions: Sequence[str]) -> Conditioning:
        return {"crossattn": self.sd_model.cond_stage_model(list(captions))}

    def sample(self, prompts: Sequence) -> List:
        if self.sampler is None:
            return super().sample(prompts)
        return self.sampler(prompts)

    def count_tokens(self, text: str) -> Optional[int]:
        tokenizer = getattr(getattr(self.sd_model.cond_stage_model, "wrapped", None), "tokenizer", None)
        return len(tokenizer(text).input_ids) - 2 if tokenizer is not None else None

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                image_info: Optional[Sequence] = None) -> torch.Tensor:
        return self.sd_model.apply_model(noisy_latents, timesteps, cond["crossattn"])
