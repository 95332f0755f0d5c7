"""Tiny randomly initialised BLIP and CLIP models saved as folders (tests; no downloads).

They load through the same `--model PATH` code as real models. Tokenizer files are written to the folder
and read back with from_pretrained, which works on transformers 4.x and 5.x alike.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lora_trainer.models.tokenizers import write_clip_tokenizer_files

IMAGE_SIZE = 32
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=IMAGE_SIZE, patch_size=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "an", "the", "of", "on", "in", "with",
              "red", "green", "blue", "dog", "cat", "photo", "painting", "grass", "sky", "small", "big", "image"]
CLIP_MERGES = ["t h", "th e</w>", "a n", "an d</w>", "r e", "re d</w>", "o n", "i n", "in g</w>"]


def build_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A BLIP captioning model (BlipForConditionalGeneration + BlipProcessor) in `folder`."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                              tokenizer=tokenizer)
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), max_position_embeddings=64, encoder_hidden_size=32,
                bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=dict(TINY_VISION),
                                                    projection_dim=32)).eval()
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIP model (CLIPModel + CLIPProcessor) in `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    write_clip_tokenizer_files(folder, CLIP_MERGES)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(TINY_VISION), projection_dim=16)).eval()
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
