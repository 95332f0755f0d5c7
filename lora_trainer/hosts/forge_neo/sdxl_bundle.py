"""ForgeSDXLBundle: Forge Neo's loaded SDXL model (`backend.diffusion_engine.sdxl.StableDiffusionXL`) in place.

Conditioning is built the way Forge's `get_learned_conditioning` builds it, outside inference mode so that
text-encoder LoRA gets gradients: CLIP-L and CLIP-G through Forge's two text processing engines, padded to
one length and concatenated on channels (`crossattn`); the pooled CLIP-G output first in `vector`, then
the six size/crop values (original height and width, crop top and left, target height and width) through
the model's own `embedder` (Forge's `Timestep(256)`), per sample from each image's bucket and crop.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from ...models.bundle import Conditioning
from .bundle import ForgeBundle


def pad_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    """[B, T, C] padded with zeros to [B, length, C] (as Forge pads CLIP-L and CLIP-G to one length)."""
    return torch.cat([t, t.new_zeros(t.size(0), length - t.size(1), t.size(2))], dim=1) if t.size(1) < length else t


class ForgeSDXLBundle(ForgeBundle):
    """Forge Neo's SDXL base model trained in place."""

    def _engines(self) -> List[Any]:
        return [self.sd_model.text_processing_engine_l, self.sd_model.text_processing_engine_g]

    def encode_captions(self, captions: Sequence[str]) -> Conditioning:
        engine_l, engine_g = self._engines()
        cond_l = engine_l(list(captions))
        cond_g, pooled = engine_g(list(captions))
        length = max(cond_l.size(1), cond_g.size(1))
        return {"crossattn": torch.cat([pad_tokens(cond_l, length), pad_tokens(cond_g, length)], dim=2),
                "vector": pooled}

    def size_values(self, image_info: Optional[Sequence], batch: int, height: int, width: int) -> torch.Tensor:
        """[B, 6]: original (h, w), crop (top, left), target (h, w) of each sample, in pixels."""
        if not image_info:
            return torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32)
        return torch.tensor([[*i.original_size, *i.crop_top_left, *i.target_size] for i in image_info],
                            dtype=torch.float32)

    def _unet_inputs(self, noisy: torch.Tensor, cond: Conditioning,
                     image_info: Optional[Sequence]) -> Dict[str, torch.Tensor]:
        b, _, h, w = noisy.shape
        values = self.size_values(image_info, b, h * self.vae_factor, w * self.vae_factor)
        sizes = self.sd_model.embedder(values.flatten()).reshape(b, -1).to(cond["vector"])
        y = torch.cat([cond["vector"], sizes], dim=1)
        return {"context": cond["crossattn"].to(self.compute_dtype), "y": y.to(self.compute_dtype)}
