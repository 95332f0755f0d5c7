"""kohya LoRA names and the module-path maps between the ldm/sgm and diffusers UNet layouts.

kohya name = prefix + "_" + module path with "." replaced by "_". SD1/SD2 UNet names use diffusers
paths (`down_blocks_0_attentions_0_...`), SDXL UNet names use sgm paths (`input_blocks_4_1_...`), and
text-encoder names always read `text_model_encoder_layers_N_...` (transformers >= 5.6 dropped the
`text_model` submodule, so it is added back here).
"""
from __future__ import annotations

import re

_LDM_IN = re.compile(r"^input_blocks\.(\d+)\.1\.(.*)$")
_LDM_MID = re.compile(r"^middle_block\.1\.(.*)$")
_LDM_OUT = re.compile(r"^output_blocks\.(\d+)\.1\.(.*)$")
_DIF_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")
_DIF_MID = re.compile(r"^mid_block\.attentions\.0\.(.*)$")
_DIF_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")
_OPEN_CLIP = re.compile(r"^transformer\.resblocks\.(\d+)\.(attn|mlp)\.(q_proj|k_proj|v_proj|out_proj|c_fc|c_proj)$")


def kohya_name(prefix: str, module_path: str) -> str:
    """`lora_unet` + `down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return f"{prefix}_{module_path.replace('.', '_')}"


def text_encoder_path(module_path: str) -> str:
    """CLIP module path in the `text_model.`-prefixed layout that kohya names use."""
    return module_path if module_path.startswith("text_model.") else f"text_model.{module_path}"


def open_clip_text_encoder_path(module_path: str) -> str:
    """open_clip text-tower path -> the converted transformers CLIP path that kohya names use:
    `transformer.resblocks.3.attn.q_proj` -> `text_model.encoder.layers.3.self_attn.q_proj`, `mlp.c_fc` -> `mlp.fc1`."""
    m = _OPEN_CLIP.match(module_path)
    if not m:
        raise ValueError(f"not an attention or MLP path of an open_clip text tower: {module_path!r}")
    leaf = {"c_fc": "fc1", "c_proj": "fc2"}.get(m.group(3), m.group(3))
    kind = "self_attn" if m.group(2) == "attn" else "mlp"
    return f"text_model.encoder.layers.{m.group(1)}.{kind}.{leaf}"


def ldm_to_diffusers_unet_path(path: str, layers_per_block: int) -> str:
    """Path of a transformer-block module in an ldm/sgm UNet -> the same module in a diffusers UNet."""
    per_level = layers_per_block + 1
    m = _LDM_IN.match(path)
    if m:
        k = int(m.group(1)) - 1
        return f"down_blocks.{k // per_level}.attentions.{k % per_level}.{m.group(2)}"
    m = _LDM_MID.match(path)
    if m:
        return f"mid_block.attentions.0.{m.group(1)}"
    m = _LDM_OUT.match(path)
    if m:
        k = int(m.group(1))
        return f"up_blocks.{k // per_level}.attentions.{k % per_level}.{m.group(2)}"
    raise ValueError(f"not a transformer-block module path of an ldm UNet: {path!r}")


def diffusers_to_ldm_unet_path(path: str, layers_per_block: int) -> str:
    """Inverse of `ldm_to_diffusers_unet_path` (sgm paths for SDXL kohya names)."""
    per_level = layers_per_block + 1
    m = _DIF_DOWN.match(path)
    if m:
        return f"input_blocks.{1 + int(m.group(1)) * per_level + int(m.group(2))}.1.{m.group(3)}"
    m = _DIF_MID.match(path)
    if m:
        return f"middle_block.1.{m.group(1)}"
    m = _DIF_UP.match(path)
    if m:
        return f"output_blocks.{int(m.group(1)) * per_level + int(m.group(2))}.1.{m.group(3)}"
    raise ValueError(f"not a transformer-block module path of a diffusers UNet: {path!r}")
