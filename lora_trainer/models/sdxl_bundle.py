"""SDXLBundle: SDXL as diffusers UNet/VAE + transformers CLIP-L (CLIPTextModel) and OpenCLIP bigG
(CLIPTextModelWithProjection).

Conditioning, as diffusers' StableDiffusionXLPipeline and kohya compute it:
- `crossattn` [B, 77, 768 + 1280]: both encoders' penultimate hidden states (no final LayerNorm),
  concatenated; `clip_skip` N > 1 moves both N - 1 layers further back;
- `pooled` [B, 1280]: encoder 2's projected pooled output (`text_embeds`);
- time ids per sample, from the image (not cached with the text): original (h, w), crop (top, left) and
  target (h, w) of its bucket, passed to the UNet as `added_cond_kwargs`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from ..network.kohya_names import kohya_name, text_encoder_path
from ..network.network import NetworkComponent
from ..network.targets import text_encoder_targets
from .bundle import Conditioning
from .diffusers_bundle import DiffusersBundle, flag_checkpointed_blocks
from .family import ModelFamily


def time_ids(image_info: Optional[Sequence], batch: int, height: int, width: int) -> torch.Tensor:
    """[B, 6] (original h, w, crop top, left, target h, w); without image info: the latent's pixel size, no crop."""
    if not image_info:
        return torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32)
    return torch.tensor([[*i.original_size, *i.crop_top_left, *i.target_size] for i in image_info],
                        dtype=torch.float32)


class SDXLBundle(DiffusersBundle):
    """UNet2DConditionModel (text_time) + AutoencoderKL + two CLIP text encoders and their tokenizers."""

    graph_capturable = False  # predict builds the size conditioning (time_ids) from host data

    def __init__(self, family: ModelFamily, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer,
                 text_encoder_2: nn.Module, tokenizer_2, alphas_cumprod: torch.Tensor, prediction_type: str,
                 name: str = "", clip_skip: int = 1):
        super().__init__(family, unet, vae, text_encoder, tokenizer, alphas_cumprod, prediction_type, name, clip_skip)
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2

    def pipeline(self, scheduler):
        """StableDiffusionXLPipeline over this bundle's own modules (it adds the pooled and size conditioning)."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                                         tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet,
                                         scheduler=scheduler)

    def network_components(self, train_text_encoder: bool) -> List[NetworkComponent]:
        comps = super().network_components(False)
        if train_text_encoder:
            for role, module, prefix in (("text_encoder", self.text_encoder, self.family.text_encoder_prefixes[0]),
                                         ("text_encoder_2", self.text_encoder_2, self.family.text_encoder_prefixes[1])):
                comps.append(NetworkComponent(role, module, text_encoder_targets(module),
                                           lambda p, prefix=prefix: kohya_name(prefix, text_encoder_path(p))))
        return comps

    def prepare(self, device: torch.device, base_dtype: torch.dtype, gradient_checkpointing: bool,
                train_text_encoder: bool) -> None:
        self.text_encoder_2.requires_grad_(False)
        self.text_encoder_2.eval()
        self._cast_base(self.text_encoder_2, device, base_dtype)
        super().prepare(device, base_dtype, gradient_checkpointing, train_text_encoder)

    def enable_gradient_checkpointing(self, text_encoder: bool) -> None:
        super().enable_gradient_checkpointing(text_encoder)
        if text_encoder:
            self.text_encoder_2.gradient_checkpointing_enable()
            self.text_encoder_2.enable_input_require_grads()
            flag_checkpointed_blocks(self.text_encoder_2)

    def release_text_encoders(self) -> None:
        super().release_text_encoders()
        self.text_encoder_2.to("meta")

    def offload_text_encoder(self) -> None:
        """Captions are cached and the encoders frozen: their ~1.6 GB (fp16) leave the accelerator."""
        if self.device.type != "cpu":
            self.text_encoder.to("cpu")
            self.text_encoder_2.to("cpu")

    def encode_captions(self, captions: Sequence[str]) -> Conditioning:
        layer = -1 - max(1, self.clip_skip)  # penultimate by default, as SDXL was trained
        hidden = []
        for encoder, tokenizer in ((self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)):
            ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            hidden.append(out.hidden_states[layer].to(self.device))
        return {"crossattn": torch.cat(hidden, dim=-1), "pooled": out.text_embeds.to(self.device)}

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                image_info: Optional[Sequence] = None) -> torch.Tensor:
        b, _, h, w = noisy_latents.shape
        ids = time_ids(image_info, b, h * self.vae_factor, w * self.vae_factor).to(noisy_latents.device)
        added = {"text_embeds": cond["pooled"], "time_ids": ids.to(cond["pooled"].dtype)}
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=cond["crossattn"],
                         added_cond_kwargs=added).sample
