"""DiffusersBundle: a Stable Diffusion model as diffusers UNet/VAE + transformers CLIP (SD1.x, SD2.x)."""
from __future__ import annotations

from typing import Collection, List, Optional, Sequence

import torch
from torch import nn

from ..network.kohya_names import kohya_name, text_encoder_path
from ..network.network import NetworkComponent
from ..network.targets import text_encoder_targets, unet_conv_targets, unet_targets
from .bundle import Conditioning, ModelBundle
from .family import ModelFamily
from .half_norms import HalfPrecisionNorms
from .layer_forwards import LayerForwards
from .packed_convs import PackedConvs, packed_weight_bytes


def clip_final_layer_norm(text_encoder: nn.Module) -> nn.Module:
    """CLIP's final LayerNorm in both layouts (transformers 4: text_model.final_layer_norm; 5: final_layer_norm)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def flag_checkpointed_blocks(module: nn.Module) -> None:
    """diffusers < 0.32 and transformers 4.x checkpoint a block only in training mode; our frozen models are in
    eval mode, so mark just the blocks that checkpoint as training (their children, dropout included, stay in eval)."""
    for m in module.modules():
        if getattr(m, "gradient_checkpointing", False) is True:
            m.training = True


def encode_clip(text_encoder: nn.Module, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """Last hidden state, or with clip_skip = N the N-th last layer's output through the final LayerNorm."""
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids, output_hidden_states=True)
    return clip_final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])


class DiffusersBundle(ModelBundle):
    """UNet2DConditionModel + AutoencoderKL + CLIPTextModel + CLIPTokenizer."""

    graph_capturable = True

    def __init__(self, family: ModelFamily, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                 tokenizer, alphas_cumprod: torch.Tensor, prediction_type: str, name: str = "",
                 clip_skip: int = 1):
        self.family = family
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self.prediction_type = prediction_type
        self.name = name
        self.clip_skip = clip_skip
        self.vae_scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.latent_channels = int(vae.config.latent_channels)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.dtype = torch.float32
        self._layers_per_block = int(getattr(unet.config, "layers_per_block", 2))
        self._overrides: List[LayerForwards] = []  # per-layer forwards, see restore()

    # ------------------------------------------------------------------ LoRA
    def network_components(self, train_text_encoder: bool) -> List[NetworkComponent]:
        fam = self.family
        comps = [NetworkComponent(
            "unet", self.unet, unet_targets(self.unet),
            lambda p: kohya_name(fam.unet_prefix, fam.unet_kohya_path(p, self._layers_per_block)),
            unet_conv_targets(self.unet))]
        if train_text_encoder:
            prefix = fam.text_encoder_prefixes[0]
            comps.append(NetworkComponent("text_encoder", self.text_encoder, text_encoder_targets(self.text_encoder),
                                       lambda p: kohya_name(prefix, text_encoder_path(p))))
        return comps

    # ------------------------------------------------------------------ setup
    def prepare(self, device: torch.device, base_dtype: torch.dtype, gradient_checkpointing: bool,
                train_text_encoder: bool) -> None:
        self.restore()  # packed copies of the old weights, if this bundle trained before
        self.device = torch.device(device)
        self.dtype = base_dtype
        for module in (self.unet, self.text_encoder, self.vae):
            module.requires_grad_(False)
            module.eval()
        # LoRA parameters stay fp32: cast only the frozen base weights.
        self._cast_base(self.unet, device, base_dtype)
        self._cast_base(self.text_encoder, device, base_dtype)
        self.vae.to(device=device, dtype=torch.float32)  # fp16 VAEs overflow (NaN); it runs rarely
        if gradient_checkpointing:
            self.enable_gradient_checkpointing(train_text_encoder)
        elif getattr(self.unet, "gradient_checkpointing", False):
            self.unet.disable_gradient_checkpointing()  # a bundle may be reused by a run without it
        self.unet.to(memory_format=torch.contiguous_format)  # ... or without channels_last (a no-op if so already)
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA attention

    def use_channels_last(self) -> None:
        self.unet.to(memory_format=torch.channels_last)

    def compile(self) -> None:
        self.unet.compile()

    def packed_convolution_bytes(self, in_place: bool = False, skip: Collection[nn.Module] = (),
                                 lean: bool = False) -> int:
        return packed_weight_bytes(self.unet, self.dtype, in_place, skip, lean)

    def pack_convolutions(self, in_place: bool = False, skip: Collection[nn.Module] = (), lean: bool = False) -> None:
        self._overrides.append(PackedConvs(self.unet, in_place, skip, lean))

    def use_half_precision_norms(self) -> None:
        self._overrides.append(HalfPrecisionNorms(self.unet))

    def restore(self) -> None:
        while self._overrides:
            self._overrides.pop().remove()

    def enable_gradient_checkpointing(self, text_encoder: bool) -> None:
        self.unet.enable_gradient_checkpointing()
        flag_checkpointed_blocks(self.unet)
        if text_encoder:
            self.text_encoder.gradient_checkpointing_enable()
            self.text_encoder.enable_input_require_grads()
            flag_checkpointed_blocks(self.text_encoder)

    @staticmethod
    def _cast_base(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        for p in module.parameters():
            if not p.requires_grad:
                p.data = p.data.to(device=device, dtype=dtype)
            else:
                p.data = p.data.to(device=device)
        for name, buf in module.named_buffers():
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            parent._buffers[attr] = buf.to(device=device, dtype=dtype if buf.is_floating_point() else buf.dtype)

    def offload_vae(self) -> None:
        self.vae.to("cpu")

    def release_vae_decoder(self) -> None:
        for part in (self.vae.decoder, getattr(self.vae, "post_quant_conv", None)):
            if part is not None:
                part.to("meta")  # shapes stay, memory goes

    def release_vae(self) -> None:
        self.vae.to("meta")

    def release_text_encoders(self) -> None:
        self.text_encoder.to("meta")

    # ------------------------------------------------------------------ compute
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae_device = next(self.vae.parameters()).device
        latents = self.vae.encode(pixels.to(vae_device, torch.float32)).latent_dist.mode()
        return (latents * self.vae_scale).to(self.device)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def count_tokens(self, text: str) -> Optional[int]:
        return len(self.tokenizer(text).input_ids) - 2

    def encode_captions(self, captions: Sequence[str]) -> Conditioning:
        ids = self.tokenize(captions).to(self.device)
        return {"crossattn": encode_clip(self.text_encoder, ids, self.clip_skip)}

    def betas(self) -> torch.Tensor:
        ac = self.alphas_cumprod.double()
        return (1 - ac / torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])).float()

    def pipeline(self, scheduler):
        """A diffusers pipeline over this bundle's own modules (no copies) with `scheduler`."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

    @torch.no_grad()
    def sample(self, prompts: Sequence) -> List:
        """Render with a diffusers pipeline built on the modules being trained (deterministic DDIM)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler(num_train_timesteps=self.num_train_timesteps, trained_betas=self.betas().numpy(),
                                  prediction_type=self.prediction_type, clip_sample=False, set_alpha_to_one=False,
                                  steps_offset=1)
        pipe = self.pipeline(scheduler)
        pipe.set_progress_bar_config(disable=True)
        images = []
        for p in prompts:
            latents = pipe(p.prompt, negative_prompt=p.negative or None, width=p.width, height=p.height,
                           num_inference_steps=p.steps, guidance_scale=p.cfg, output_type="latent",
                           clip_skip=(self.clip_skip - 1) or None,
                           generator=torch.Generator(self.device).manual_seed(p.seed)).images
            images.append(self.decode_latents(latents)[0])
        return images

    def decode_latents(self, latents: torch.Tensor) -> List:
        """Latents -> PIL images with the fp32 VAE (brought to the UNet's device for the decode)."""
        from PIL import Image

        home = next(self.vae.parameters()).device
        self.vae.to(self.device)
        try:
            pixels = self.vae.decode(latents.to(self.device, torch.float32) / self.vae_scale).sample
        finally:
            self.vae.to(home)
        arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                image_info: Optional[Sequence] = None) -> torch.Tensor:
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=cond["crossattn"]).sample
