"""BLIP captions: transformers `BlipForConditionalGeneration`, a batch of images per `generate` call."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from PIL import Image

from .base import CaptionerSpec, CaptionOptions, Captioner
from .loading import load_pretrained, model_dtype, resolve_model_folder

DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"


class BlipCaptioner(Captioner):
    """One sentence per image ("a dog sitting on the grass")."""

    def __init__(self, options: CaptionOptions):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        folder = resolve_model_folder(options.model or DEFAULT_BLIP, "BLIP model")
        self.device = options.device
        self.dtype = model_dtype(options.device)
        self.max_new_tokens = options.max_new_tokens
        self.num_beams = options.num_beams
        self.processor = load_pretrained(BlipProcessor, folder, "BLIP processor")
        model = load_pretrained(BlipForConditionalGeneration, folder, "BLIP model")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    def caption(self, images: Sequence[Image.Image]) -> List[Optional[str]]:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens,
                                      num_beams=self.num_beams)
        texts = self.processor.batch_decode(ids.cpu(), skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def close(self) -> None:
        self.model = None
        self.processor = None


SPEC = CaptionerSpec("blip", "BLIP captions (a sentence per image); --model: a BLIP captioning model folder",
                   BlipCaptioner)
