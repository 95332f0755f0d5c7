"""Text encoders of single-file checkpoints as transformers CLIP models (offline, in memory).

CLIP ViT-L (SD1, SDXL's first encoder) is stored in transformers layout under a prefix. OpenCLIP (SD2's
ViT-H, SDXL's bigG) is stored in open_clip layout (packed attention `in_proj`, `c_fc`/`c_proj`) and is
converted with diffusers' `convert_open_clip_checkpoint`. open_clip's attention head count is not in the
weights: it is width / 64 for every Stable Diffusion encoder, or `text_config.num_attention_heads` from
the original config for unusual (tiny test) models.

SD2 conditions on the penultimate OpenCLIP layer followed by the final LayerNorm, which is exactly a
transformers CLIPTextModel with the last layer dropped (diffusers' SD2 text encoders have 23 layers).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

import torch

from ..errors import ModelLoadError

OPEN_CLIP_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.")


def clip_text_config(sd: Dict[str, torch.Tensor], overrides: Optional[Dict[str, Any]] = None):
    """A CLIPTextConfig that fits `text_model.*` CLIP weights (heads = hidden / 64, as in every SD encoder)."""
    from transformers import CLIPTextConfig

    emb = sd["text_model.embeddings.token_embedding.weight"]
    pos = sd["text_model.embeddings.position_embedding.weight"]
    layers = {int(m.group(1)) for k in sd for m in [re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)] if m}
    hidden = emb.shape[1]
    params = dict(vocab_size=emb.shape[0], hidden_size=hidden, max_position_embeddings=pos.shape[0],
                  num_hidden_layers=len(layers), num_attention_heads=max(1, hidden // 64),
                  intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  hidden_act="quick_gelu", projection_dim=hidden)
    params.update(overrides or {})
    return CLIPTextConfig(**params)


def load_clip_text_encoder(sd: Dict[str, torch.Tensor], prefix: str, tokenizer, source: str,
                           overrides: Optional[Dict[str, Any]] = None) -> torch.nn.Module:
    """The transformers-layout CLIP text model under `prefix` (`cond_stage_model.transformer.`), weights loaded."""
    from transformers import CLIPTextModel

    clip_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not clip_sd:
        raise ModelLoadError(f"{source}: no CLIP text encoder under {prefix!r}")
    if not any(k.startswith("text_model.") for k in clip_sd):
        clip_sd = {f"text_model.{k}": v for k, v in clip_sd.items()}
    model = CLIPTextModel(clip_text_config(clip_sd, _with_token_ids(overrides, tokenizer)))
    load_text_weights(model, clip_sd, source)
    return model.eval()


def _with_token_ids(overrides: Optional[Dict[str, Any]], tokenizer) -> Dict[str, Any]:
    out = dict(overrides or {})
    for key, value in (("bos_token_id", tokenizer.bos_token_id), ("eos_token_id", tokenizer.eos_token_id),
                       ("pad_token_id", tokenizer.pad_token_id)):
        out.setdefault(key, value)
    return out


def open_clip_layer_count(sd: Dict[str, torch.Tensor], prefix: str) -> int:
    layers = {int(m.group(1)) for k in sd if k.startswith(prefix)
              for m in [OPEN_CLIP_LAYER.match(k[len(prefix):])] if m}
    return len(layers)


def open_clip_text_config(sd: Dict[str, torch.Tensor], prefix: str, overrides: Optional[Dict[str, Any]] = None,
                          drop_last: int = 0):
    """A CLIPTextConfig for the open_clip text tower under `prefix` (`cond_stage_model.model.`)."""
    from transformers import CLIPTextConfig

    emb = sd[prefix + "token_embedding.weight"]
    hidden = emb.shape[1]
    proj = sd.get(prefix + "text_projection")
    params = dict(vocab_size=emb.shape[0], hidden_size=hidden, num_attention_heads=max(1, hidden // 64),
                  max_position_embeddings=sd[prefix + "positional_embedding"].shape[0],
                  num_hidden_layers=open_clip_layer_count(sd, prefix) - drop_last,
                  intermediate_size=sd[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  hidden_act="gelu", projection_dim=int(proj.shape[1]) if proj is not None else hidden)
    params.update(overrides or {})
    return CLIPTextConfig(**params)


def load_open_clip_text_encoder(sd: Dict[str, torch.Tensor], prefix: str, tokenizer, source: str,
                                overrides: Optional[Dict[str, Any]] = None, penultimate: bool = False,
                                with_projection: bool = False) -> torch.nn.Module:
    """The open_clip text tower under `prefix` as CLIPTextModel (or ...WithProjection), weights loaded.

    `penultimate`: drop the last layer (SD2: its conditioning is the penultimate layer + final LayerNorm).
    """
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if prefix + "token_embedding.weight" not in sd:
        raise ModelLoadError(f"{source}: no OpenCLIP text encoder under {prefix!r}")
    config = open_clip_text_config(sd, prefix, _with_token_ids(overrides, tokenizer), drop_last=1 if penultimate else 0)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    # diffusers' converter hard-codes SD2's ignored keys; pick our own by layer count
    layers = config.num_hidden_layers
    tower = {k: v for k, v in sd.items() if k.startswith(prefix) and not _layer_at_least(k[len(prefix):], layers)}
    converted = sfu.convert_open_clip_checkpoint(model, tower, prefix=prefix)
    if not with_projection:
        converted.pop("text_projection.weight", None)
    load_text_weights(model, converted, source)
    return model.eval()


def _layer_at_least(key: str, layers: int) -> bool:
    m = OPEN_CLIP_LAYER.match(key)
    return bool(m) and int(m.group(1)) >= layers


def load_text_weights(model: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str) -> None:
    """Load `text_model.*` CLIP weights into either transformers layout (5.x CLIPTextModel has no text_model)."""
    if not hasattr(model, "text_model"):
        sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelLoadError(f"{source}: text encoder weights do not fit "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def open_clip_tokenizer(tokenizer):
    """The same BPE with "!" (id 0) as padding, as OpenCLIP pads (SD2, SDXL's second tokenizer)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer.name_or_path, pad_token="!", local_files_only=True)
