"""ForgeBundle: train the model Forge Neo already holds (its SD1.5 or SDXL `ForgeDiffusionEngine`) in place.

Where things are: the UNet is `sd_model.forge_objects.unet.model.diffusion_model` (ldm module names, so the
A1111 bundle's kohya naming applies), its schedule the UNet patcher's `predictor.alphas_cumprod`; the text
encoders are transformers CLIP models at `forge_objects.clip.cond_stage_model.clip_l / clip_g .transformer`,
run through Forge's own text processing engines (its tokenisation, emphasis and clip skip, as txt2img);
the VAE through `sd_model.encode_first_stage`.

What Forge needs that A1111 does not (nothing of it copies a weight):
- every weight is an inference tensor and Forge's layers may cast per call: `prepare` gives the layers
  instance forwards whose backward never holds a weight (models/frozen_layers), fetching the weights
  again with Forge's own cast (`fetch`, given by the host);
- its blocks add in place: out-of-place block forwards while training (blocks.py);
- quantised weights (NF4/FP4, GGUF, fp8, int8) are refused before anything changes.
`restore()` takes every instance forward and flag back out; Forge's patchers and memory manager are not
touched here (the host loads the model through Forge before the bundle is made).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...errors import ModelLoadError
from ...models.bundle import Conditioning, ModelBundle
from ...models.family import ModelFamily
from ...models.frozen_layers import FrozenLayerForwards, WeightFetch, own_weights
from ...network.kohya_names import kohya_name
from ...network.network import NetworkComponent
from ...network.targets import find_targets
from ..a1111.bundle import clip_component, diffusers_unet_path
from .blocks import BlockForwards, is_resblock

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TEXT_ENCODERS = ("clip_l", "clip_g")  # SD1: clip_l; SDXL: clip_l (lora_te1), clip_g (lora_te2)


def unet_targets(unet: nn.Module) -> List[str]:
    """kohya's UNet targets (every Linear / 1x1 Conv2d) inside the spatial transformers, recognised by their
    layout (`proj_in`, `transformer_blocks`, `proj_out`) like blocks.py recognises the blocks."""
    containers = {type(m).__name__ for m in unet.modules()
                  if all(hasattr(m, name) for name in ("proj_in", "transformer_blocks", "proj_out"))}
    return find_targets(unet, containers)


def unet_conv_targets(unet: nn.Module) -> List[str]:
    """LoCon's extra UNet targets: every Linear and Conv2d of the ResBlocks (recognised by their layout, as
    blocks.py does) and of the down/up samplers (`Downsample` / `Upsample`, as in ldm)."""
    containers = {type(m).__name__ for m in unet.modules() if is_resblock(m)} | {"Downsample", "Upsample"}
    return find_targets(unet, containers, any_kernel=True)


def quantised_layers(model: nn.Module, limit: int = 3) -> List[str]:
    """Names of the first `limit` modules holding weights that are not plain float tensors (NF4/FP4, GGUF, fp8...)."""
    found = []
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if p.dtype not in FLOAT_DTYPES or type(p) not in (nn.Parameter, torch.Tensor):
                found.append(f"{name or type(model).__name__} ({type(module).__name__}, {p.dtype})")
                break
        if len(found) >= limit:
            break
    return found


class ForgeBundle(ModelBundle):
    """Forge Neo's loaded SD1.5 / SDXL model trained in place; see the module docstring."""

    def __init__(self, sd_model: Any, family: ModelFamily, name: str = "", fetch: WeightFetch = own_weights):
        self.sd_model = sd_model
        self.family = family
        self.name = name
        self.fetch = fetch
        objects = sd_model.forge_objects
        self.kmodel = objects.unet.model
        self.unet = self.kmodel.diffusion_model
        self.text_module = objects.clip.cond_stage_model
        encoders = [getattr(self.text_module, key, None) for key in TEXT_ENCODERS]  # Forge's JointTextEncoder
        self.text_encoders = [e.transformer for e in encoders if e is not None][:len(family.text_encoder_prefixes)]
        self.text_encoder = self.text_encoders[0]
        self.vae = objects.vae.first_stage_model
        predictor = self.kmodel.predictor
        if getattr(predictor, "alphas_cumprod", None) is None:
            raise ModelLoadError(f"the loaded model ({name}) uses a {type(predictor).__name__} schedule (a flow "
                                 f"model): only discrete-time SD1.5 / SDXL checkpoints can be trained in Forge")
        self.alphas_cumprod = predictor.alphas_cumprod.detach().float().cpu().clone()
        self.prediction_type = predictor.prediction_type
        self.device = torch.device(objects.unet.load_device)
        self.compute_dtype = self.kmodel.computation_dtype
        self.scale_factor = 1.0  # Forge's encode_first_stage already applies the latent format
        self._forwards: List[Any] = []
        self._saved: Optional[Dict[str, Any]] = None
        self.sampler = None  # set by the host: renders SamplePrompts through Forge's txt2img
        self.refuse_quantised()

    def refuse_quantised(self) -> None:
        for part, module in (("UNet", self.unet), ("text encoder", self.text_module)):
            bad = quantised_layers(module)
            if bad:
                raise ModelLoadError(f"the loaded checkpoint's {part} has quantised weights ({'; '.join(bad)}): "
                                     f"LoRA training needs fp16/bf16/fp32 weights; load the checkpoint without "
                                     f"NF4/GGUF/fp8 (Diffusion in Low Bits: Automatic) and start again")

    @property
    def fixed_placement(self) -> Tuple[torch.device, torch.dtype]:
        """Forge decides the device and the compute dtype (its layers cast their weights to it per call)."""
        return self.device, self.compute_dtype

    # ------------------------------------------------------------------ LoRA
    def _layers_per_block(self) -> int:
        nrb = getattr(self.unet, "num_res_blocks", 2)
        return int(nrb[0] if isinstance(nrb, (list, tuple)) else nrb)

    def network_components(self, train_text_encoder: bool) -> List[NetworkComponent]:
        fam, layers = self.family, self._layers_per_block()
        comps = [NetworkComponent(
            "unet", self.unet, unet_targets(self.unet),
            lambda p: kohya_name(fam.unet_prefix, fam.unet_kohya_path(diffusers_unet_path(p, layers), layers)),
            unet_conv_targets(self.unet))]  # LoCon-style kinds: the ResBlocks' and samplers' layers
        if train_text_encoder:
            roles = ("text_encoder", "text_encoder_2")
            comps += [clip_component(role, te, prefix)
                      for role, te, prefix in zip(roles, self.text_encoders, fam.text_encoder_prefixes)]
        return comps

    # ------------------------------------------------------------------ setup / restore
    def prepare(self, device: torch.device, base_dtype: torch.dtype, gradient_checkpointing: bool,
                train_text_encoder: bool) -> None:
        """Freeze flags and modes saved; frozen-layer and block forwards installed; nothing moved or cast."""
        modules = [self.unet, self.text_module]
        params = [p for m in modules for p in m.parameters()]
        mods = [x for m in modules for x in m.modules()]
        self._saved = {"requires_grad": [(p, p.requires_grad) for p in params],
                       "training": [(m, m.training) for m in mods]}
        for m in modules:
            m.requires_grad_(False)
            m.eval()
        blocks = BlockForwards(self.unet)
        self._forwards = [blocks, FrozenLayerForwards(self.unet, self.fetch)]
        if train_text_encoder:
            self._forwards += [FrozenLayerForwards(te, self.fetch) for te in self.text_encoders]
        if gradient_checkpointing:
            blocks.checkpoint()

    def enable_gradient_checkpointing(self, text_encoder: bool) -> None:
        for forwards in self._forwards:
            if isinstance(forwards, BlockForwards):
                forwards.checkpoint()

    def restore(self) -> None:
        """Undo prepare(): instance forwards removed, flags and modes exactly as they were."""
        for forwards in self._forwards:
            forwards.remove()
        self._forwards = []
        saved, self._saved = self._saved, None
        if not saved:
            return
        with torch.inference_mode():  # Forge's text encoders hold inference tensors with requires_grad=True:
            for p, flag in saved["requires_grad"]:  # setting that back is allowed in inference mode only
                p.requires_grad_(flag)
        for m, training in saved["training"]:
            m.training = training

    # ------------------------------------------------------------------ compute
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.sd_model.encode_first_stage(pixels.to(self.device, torch.float32))
        return latents.float().clone().to(self.device)  # a normal tensor (Forge encodes under inference_mode)

    def _engines(self) -> List[Any]:
        return [self.sd_model.text_processing_engine]

    def encode_captions(self, captions: Sequence[str]) -> Conditioning:
        return {"crossattn": self._engines()[0](list(captions))}

    def _unet_inputs(self, noisy: torch.Tensor, cond: Conditioning,
                     image_info: Optional[Sequence]) -> Dict[str, torch.Tensor]:
        return {"context": cond["crossattn"].to(self.compute_dtype)}

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                image_info: Optional[Sequence] = None) -> torch.Tensor:
        """The UNet called as Forge's KModel calls it for discrete-time models (the engine's noisy latents are
        already scaled like k-diffusion's calculate_input); a fresh transformer_options dict per call."""
        inputs = self._unet_inputs(noisy_latents, cond, image_info)
        out = self.unet(noisy_latents.to(self.compute_dtype), timesteps.float(), transformer_options={}, **inputs)
        return out.float()

    def sample(self, prompts: Sequence) -> List:
        if self.sampler is None:
            return super().sample(prompts)
        return self.sampler(prompts)

    def count_tokens(self, text: str) -> Optional[int]:
        _, count = self._engines()[0].process_texts([text])
        return int(count)
