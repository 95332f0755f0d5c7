"""A1111SDXLBundle: train the WebUI's loaded SDXL model (sgm `DiffusionEngine`) in place.

Everything the WebUI bundle does for SD1 holds (LoRA layers on the model's own modules, nothing copied,
`restore()` puts it back exactly); what differs is taken from the model object, never from `modules.*`:

- conditioning is built by the model's own `conditioner.embedders`, in their order, the way sgm's
  `GeneralConditioner` does: the text embedders (input key "txt": the WebUI-wrapped CLIP-L and OpenCLIP
  bigG, so WebUI tokenisation and emphasis apply) give `crossattn` (3-D outputs, concatenated on
  channels) and the pooled text `vector` (2-D); the size/crop embedders are run per sample in
  `predict`, from each image's original size, crop and bucket (txt2img uses the image size and the
  crop setting). The conditioner itself runs its embedders under `no_grad`, so it is not called directly
  (text-encoder LoRA needs gradients through them);
- noise predictions come from `sd_model.apply_model(x, t, {"crossattn", "vector"})` with discrete
  timesteps, as the WebUI samples SDXL;
- latents are the VAE posterior's mean times `scale_factor` (sgm's `encode_first_stage` samples).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ...errors import ModelLoadError
from ...network.network import NetworkComponent
from ...models.bundle import Conditioning
from .bundle import A1111Bundle, clip_component, find_clip_text_model, find_open_clip_model, open_clip_component

TEXT_KEY = "txt"
SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")


class A1111SDXLBundle(A1111Bundle):
    """An sgm DiffusionEngine (the WebUI's SDXL `shared.sd_model`) trained in place."""

    def _text_module(self) -> nn.Module:
        embedders = list(self.sd_model.conditioner.embedders)
        keys = [getattr(e, "input_key", None) for e in embedders]
        unknown = [k for k in keys if k != TEXT_KEY and k not in SIZE_KEYS]
        if unknown:
            raise ModelLoadError(f"the loaded SDXL model's conditioner also needs {unknown} (an SDXL refiner or "
                                 f"inpainting model?); only SDXL base models can be trained")
        text_at = [i for i, k in enumerate(keys) if k == TEXT_KEY]
        size_at = [i for i, k in enumerate(keys) if k in SIZE_KEYS]
        if not text_at or (size_at and max(text_at) > min(size_at)):
            raise ModelLoadError(f"the loaded SDXL model's conditioner has an unexpected layout {keys}: expected the "
                                 f"text embedders first, then {', '.join(SIZE_KEYS)}")
        self.text_embedders = [e for e in embedders if e.input_key == TEXT_KEY]
        self.size_embedders = [e for e in embedders if e.input_key in SIZE_KEYS]
        return self.sd_model.conditioner

    def _find_text_encoder(self) -> Optional[nn.Module]:
        return find_clip_text_model(self.text_embedders[0])

    def text_encoder_components(self) -> List[NetworkComponent]:
        """CLIP-L (`lora_te1_`) and every block of OpenCLIP bigG (`lora_te2_`: its last layer makes the pooled
        vector), from the WebUI-wrapped embedders 0 and 1."""
        te1, te2 = self.family.text_encoder_prefixes
        comps = [clip_component("text_encoder", self.text_encoder, te1)]
        for embedder in self.text_embedders[1:]:
            tower = find_open_clip_model(embedder)
            if tower is None:
                raise ModelLoadError(f"the loaded SDXL model's second text embedder is not OpenCLIP "
                                     f"({type(embedder).__name__})")
            comps.append(open_clip_component("text_encoder_2", tower, te2, len(tower.transformer.resblocks)))
        return comps

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        p = next(vae.parameters())
        moments = vae.quant_conv(vae.encoder(pixels.to(p.device, p.dtype)))
        latents = moments.chunk(2, dim=1)[0].float() * self.scale_factor
        if not torch.isfinite(latents).all():
            raise ModelLoadError(f"the VAE produced NaN/inf latents in {p.dtype}: start the WebUI with --no-half-vae, "
                                 f"or select the fp16-fixed SDXL VAE")
        return latents.to(self.device)

    def encode_captions(self, captions: Sequence[str]) -> Conditioning:
        parts: Dict[str, List[torch.Tensor]] = {"crossattn": [], "vector": []}
        for embedder in self.text_embedders:
            out = embedder(list(captions))
            for tensor in out if isinstance(out, (list, tuple)) else (out,):
                parts["crossattn" if tensor.dim() == 3 else "vector"].append(tensor)
        cond = {"crossattn": torch.cat(parts["crossattn"], dim=2)}
        if parts["vector"]:
            cond["vector"] = torch.cat(parts["vector"], dim=1)
        return cond

    def size_values(self, key: str, image_info: Optional[Sequence], batch: int, height: int,
                    width: int) -> torch.Tensor:
        """[B, 2] per-sample values of one size/crop embedder's input."""
        if not image_info:
            value = (0, 0) if key == "crop_coords_top_left" else (height, width)
            return torch.tensor([value] * batch, dtype=torch.float32)
        field = {"original_size_as_tuple": "original_size", "crop_coords_top_left": "crop_top_left",
                 "target_size_as_tuple": "target_size"}[key]
        return torch.tensor([getattr(i, field) for i in image_info], dtype=torch.float32)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                image_info: Optional[Sequence] = None) -> torch.Tensor:
        b, _, h, w = noisy_latents.shape
        vector = [cond["vector"]] if "vector" in cond else []
        for embedder in self.size_embedders:
            values = self.size_values(embedder.input_key, image_info, b, h * self.vae_factor, w * self.vae_factor)
            vector.append(embedder(values.to(noisy_latents.device)).to(cond["crossattn"].dtype))
        return self.sd_model.apply_model(noisy_latents, timesteps,
                                         {"crossattn": cond["crossattn"], "vector": torch.cat(vector, dim=1)})

    def count_tokens(self, text: str) -> Optional[int]:
        tokenizer = getattr(getattr(self.text_embedders[0], "wrapped", None), "tokenizer", None)
        return len(tokenizer(text).input_ids) - 2 if tokenizer is not None else None
