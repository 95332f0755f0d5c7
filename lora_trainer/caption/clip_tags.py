"""CLIP tags: a CLIP model ranks short phrases shipped with the package and keeps the best of each category.

The vocabulary is a folder of `<category>.txt` files (one phrase a line, `#` comments); `<category>.topN.txt`
keeps up to N phrases of that category (default 1). Within a category, CLIP's image-text similarities
(times the model's logit scale) go through a softmax, and a phrase is kept when its share is at least
`tag_threshold` (0 keeps the top N always, as the WebUI's interrogator does).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from PIL import Image

from ..errors import CaptionError
from .base import CaptionerSpec, CaptionOptions, Captioner
from .loading import features, load_pretrained, model_dtype, resolve_model_folder

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # ViT-L/14, the CLIP the WebUI's interrogator uses
VOCAB_DIR = Path(__file__).parent / "vocab"
CATEGORY_ORDER = ("subject", "medium", "style", "lighting", "colour", "composition")
TOP_N = re.compile(r"^(.*)\.top(\d+)$")
TEXT_BATCH = 64


@dataclass(frozen=True)
class Category:
    name: str
    phrases: List[str]
    top: int = 1


def load_vocabulary(folder: Optional[Path] = None) -> List[Category]:
    """The categories in `folder` (default: the shipped lists), in CATEGORY_ORDER, then by name."""
    folder = Path(folder) if folder else VOCAB_DIR
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    categories = []
    for file in files:
        match = TOP_N.match(file.stem)
        name, top = (match.group(1), int(match.group(2))) if match else (file.stem, 1)
        lines = file.read_text(encoding="utf-8").splitlines()
        phrases = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        if phrases and top > 0:
            categories.append(Category(name, phrases, top))
    if not categories:
        raise CaptionError(f"tag vocabulary folder {str(folder)!r} has no phrase lists (<category>.txt, one phrase a line)")
    rank = {name: i for i, name in enumerate(CATEGORY_ORDER)}
    return sorted(categories, key=lambda c: (rank.get(c.name, len(rank)), c.name))


def all_phrases(categories: Sequence[Category]) -> List[str]:
    return [p for c in categories for p in c.phrases]


def rank_tags(image_embeds: torch.Tensor, text_embeds: torch.Tensor, categories: Sequence[Category],
              scale: float, threshold: float) -> List[List[str]]:
    """Tags per image. Embeddings are L2-normalised; text rows follow `all_phrases(categories)`."""
    logits = scale * image_embeds.float() @ text_embeds.float().T  # [images, phrases]
    tags: List[List[str]] = [[] for _ in range(logits.shape[0])]
    start = 0
    for cat in categories:
        end = start + len(cat.phrases)
        probs = logits[:, start:end].softmax(dim=-1)
        top = probs.topk(min(cat.top, len(cat.phrases)), dim=-1)
        for i in range(probs.shape[0]):
            for p, j in zip(top.values[i].tolist(), top.indices[i].tolist()):
                if p >= threshold:
                    tags[i].append(cat.phrases[j])
        start = end
    return tags


class ClipTagger(Captioner):
    """Comma-separated tags per image ("a dog, a photograph, soft lighting")."""

    def __init__(self, options: CaptionOptions):
        from transformers import CLIPModel, CLIPProcessor

        self.categories = load_vocabulary(Path(options.vocab_dir) if options.vocab_dir else None)
        folder = resolve_model_folder(options.clip_model or options.model or DEFAULT_CLIP, "CLIP model")
        self.device = options.device
        self.dtype = model_dtype(options.device)
        self.threshold = options.tag_threshold
        self.processor = load_pretrained(CLIPProcessor, folder, "CLIP processor")
        model = load_pretrained(CLIPModel, folder, "CLIP model")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.scale = min(float(self.model.logit_scale.detach().exp()), 100.0)  # CLIP clamps it at 100 in training
        self.text_embeds: Optional[torch.Tensor] = None  # computed once, on first use

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, [len(texts), dim]."""
        rows = []
        for i in range(0, len(texts), TEXT_BATCH):
            batch = self.processor(text=list(texts[i:i + TEXT_BATCH]), return_tensors="pt", padding=True,
                                   truncation=True)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                rows.append(features(self.model.get_text_features(**batch)).float())
        emb = torch.cat(rows)
        return emb / emb.norm(dim=-1, keepdim=True)

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, [len(images), dim]."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            emb = features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def caption(self, images: Sequence[Image.Image]) -> List[Optional[str]]:
        if self.text_embeds is None:
            self.text_embeds = self.embed_texts(all_phrases(self.categories))
        tags = rank_tags(self.embed_images(images), self.text_embeds, self.categories, self.scale, self.threshold)
        return [", ".join(t) for t in tags]

    def close(self) -> None:
        self.model = None
        self.processor = None
        self.text_embeds = None


SPEC = CaptionerSpec("clip-tags", "CLIP ranks the shipped phrase lists (medium, style, lighting, ...); "
                   "--model/--clip-model: a CLIP model folder", ClipTagger)
