"""Which weight of an ldm-layout single-file checkpoint a kohya LoRA module patches.

Built from the checkpoint's own keys, the way the WebUI builds its lookup: every Linear / Conv weight
(2-D or 4-D; not the text encoder's embeddings) gets the kohya name of its module. UNet keys go
ldm path -> diffusers path (`unet_paths`) -> the family's kohya naming; text-encoder keys are
transformers CLIP paths under a prefix.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Sequence, Tuple

from .kohya_names import kohya_name, text_encoder_path
from .unet_paths import infer_layers_per_block, ldm_to_diffusers_unet_module

WEIGHT = ".weight"


def _is_layer_weight(key: str, shape: Sequence[int]) -> bool:
    return key.endswith(WEIGHT) and len(shape) in (2, 4)


def ldm_checkpoint_lora_keys(shapes: Mapping[str, Sequence[int]], unet_prefix: str, unet_lora_prefix: str,
                             unet_kohya_path: Callable[[str, int], str],
                             text_encoders: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    """{kohya module name: checkpoint weight key} for the UNet and the CLIP text encoder(s).

    `unet_prefix` is the UNet's key prefix (`model.diffusion_model.`), `unet_kohya_path(diffusers_path,
    layers_per_block)` the family's kohya module path, and `text_encoders` pairs of (checkpoint key prefix
    of a transformers CLIPTextModel, kohya prefix), e.g. `("cond_stage_model.transformer.", "lora_te")`.
    """
    unet_keys = {k[len(unet_prefix):]: k for k in shapes if k.startswith(unet_prefix)}
    out: Dict[str, str] = {}
    if unet_keys:
        layers = infer_layers_per_block(unet_keys)
        for path, key in unet_keys.items():
            if not _is_layer_weight(key, shapes[key]):
                continue
            diffusers = ldm_to_diffusers_unet_module(path[: -len(WEIGHT)], layers)
            if diffusers is not None:
                out[kohya_name(unet_lora_prefix, unet_kohya_path(diffusers, layers))] = key
    for key_prefix, lora_prefix in text_encoders:
        for key, shape in shapes.items():
            if key.startswith(key_prefix) and _is_layer_weight(key, shape) and ".embeddings." not in key:
                module = key[len(key_prefix): -len(WEIGHT)]
                out[kohya_name(lora_prefix, text_encoder_path(module))] = key
    return out
