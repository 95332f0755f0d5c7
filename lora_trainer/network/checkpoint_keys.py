"""Which weight of an ldm-layout single-file checkpoint a kohya LoRA module patches.

Built from the checkpoint's own keys, the way the WebUI builds its lookup: every Linear / Conv weight
(2-D or 4-D; not the text encoder's embeddings) gets the kohya name of its module. UNet keys go
ldm path -> diffusers path (`unet_paths`) -> the family's kohya naming; text-encoder keys are
transformers CLIP paths under a prefix (SD1, SDXL's CLIP-L) or open_clip paths (SD2, SDXL's bigG), whose
attention packs q, k and v into one `in_proj_weight`: a q/k/v module patches a third of its rows, as the
WebUI's Lora extension patches `MultiheadAttention`.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

from .kohya_names import kohya_name, open_clip_text_encoder_path, text_encoder_path
from .unet_paths import infer_layers_per_block, ldm_to_diffusers_unet_module

WEIGHT = ".weight"
_OPEN_CLIP_WEIGHT = re.compile(r"^transformer\.resblocks\.(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|"
                               r"mlp\.c_fc\.weight|mlp\.c_proj\.weight)$")


class WeightRef(NamedTuple):
    """The checkpoint weight a kohya module changes, or a block of its rows [start, stop)."""

    key: str
    rows: Optional[Tuple[int, int]] = None

    def shape(self, shapes: Mapping[str, Sequence[int]]) -> Tuple[int, ...]:
        """The shape of the part this module changes."""
        full = tuple(int(s) for s in shapes[self.key])
        return full if self.rows is None else (self.rows[1] - self.rows[0],) + full[1:]


def _is_layer_weight(key: str, shape: Sequence[int]) -> bool:
    return key.endswith(WEIGHT) and len(shape) in (2, 4)


def ldm_checkpoint_lora_keys(shapes: Mapping[str, Sequence[int]], unet_prefix: str, unet_lora_prefix: str,
                             unet_kohya_path: Optional[Callable[[str, int], str]],
                             text_encoders: Sequence[Tuple[str, str]],
                             open_clip_encoders: Sequence[Tuple[str, str]] = ()) -> Dict[str, WeightRef]:
    """{kohya module name: checkpoint weight} for the UNet and the text encoder(s).

    `unet_prefix` is the UNet's key prefix (`model.diffusion_model.`), `unet_kohya_path(diffusers_path,
    layers_per_block)` the family's kohya module path (None: kohya names are the checkpoint's own sgm
    paths, as SDXL's are), and `text_encoders` pairs of (checkpoint key prefix of a transformers
    CLIPTextModel, kohya prefix), e.g. `("cond_stage_model.transformer.", "lora_te")`;
    `open_clip_encoders` the same for open_clip text towers (`("cond_stage_model.model.", "lora_te")`).
    """
    unet_keys = {k[len(unet_prefix):]: k for k in shapes if k.startswith(unet_prefix)}
    out: Dict[str, WeightRef] = {}
    if unet_keys:
        layers = infer_layers_per_block(unet_keys)
        for path, key in unet_keys.items():
            if not _is_layer_weight(key, shapes[key]):
                continue
            if unet_kohya_path is None:
                out[kohya_name(unet_lora_prefix, path[: -len(WEIGHT)])] = WeightRef(key)
                continue
            diffusers = ldm_to_diffusers_unet_module(path[: -len(WEIGHT)], layers)
            if diffusers is not None:
                out[kohya_name(unet_lora_prefix, unet_kohya_path(diffusers, layers))] = WeightRef(key)
    for key_prefix, lora_prefix in text_encoders:
        for key, shape in shapes.items():
            if key.startswith(key_prefix) and _is_layer_weight(key, shape) and ".embeddings." not in key:
                module = key[len(key_prefix): -len(WEIGHT)]
                out[kohya_name(lora_prefix, text_encoder_path(module))] = WeightRef(key)
    for key_prefix, lora_prefix in open_clip_encoders:
        out.update(open_clip_lora_keys(shapes, key_prefix, lora_prefix))
    return out


def open_clip_lora_keys(shapes: Mapping[str, Sequence[int]], key_prefix: str, lora_prefix: str) -> Dict[str, WeightRef]:
    """{kohya module name: weight} of an open_clip text tower under `key_prefix`: attention q/k/v are row
    thirds of `attn.in_proj_weight`, out_proj / c_fc / c_proj whole weights (kohya names of the converted
    transformers model: `..._self_attn_q_proj`, `..._mlp_fc1`)."""
    out: Dict[str, WeightRef] = {}
    for key, shape in shapes.items():
        m = _OPEN_CLIP_WEIGHT.match(key[len(key_prefix):]) if key.startswith(key_prefix) else None
        if m is None:
            continue
        block = f"transformer.resblocks.{m.group(1)}."
        if m.group(2) == "attn.in_proj_weight":
            width = int(shape[0]) // 3
            for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
                name = kohya_name(lora_prefix, open_clip_text_encoder_path(f"{block}attn.{part}"))
                out[name] = WeightRef(key, (i * width, (i + 1) * width))
        else:
            name = kohya_name(lora_prefix, open_clip_text_encoder_path(block + m.group(2)[: -len(WEIGHT)]))
            out[name] = WeightRef(key)
    return out
