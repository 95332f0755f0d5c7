"""Every module of an ldm (SD1/SD2) UNet -> the same module in a diffusers `UNet2DConditionModel`.

`kohya_names.ldm_to_diffusers_unet_path` covers the transformer blocks (what plain LoRAs target); LoCon
files also patch the ResNet blocks' convolutions, the down/up samplers, conv_in/out and the time
embedding, so merging them into an ldm-layout checkpoint needs the whole map. It mirrors diffusers'
`convert_ldm_unet_checkpoint` (and the WebUI's own kohya-name lookup):

- `input_blocks.0.0` -> `conv_in`; `time_embed.0/2` -> `time_embedding.linear_1/2`; `out.0/2` ->
  `conv_norm_out` / `conv_out`;
- `input_blocks.N.0` -> `down_blocks.L.resnets.J` (`in_layers.2` -> `conv1`, `emb_layers.1` ->
  `time_emb_proj`, `out_layers.3` -> `conv2`, `skip_connection` -> `conv_shortcut`, norms likewise),
  `input_blocks.N.1` -> `down_blocks.L.attentions.J`, `input_blocks.N.0.op` -> `down_blocks.L.downsamplers.0.conv`;
- `middle_block.0/1/2` -> `mid_block.resnets.0` / `mid_block.attentions.0` / `mid_block.resnets.1`;
- `output_blocks.N.0` -> `up_blocks.L.resnets.J`, `output_blocks.N.1` -> `up_blocks.L.attentions.J`, and the
  upsampler `output_blocks.N.2.conv` (`output_blocks.N.1.conv` on a level without attention) ->
  `up_blocks.L.upsamplers.0.conv`.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
TOP_LEVEL = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)(?:\.(.*))?$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)(?:\.(.*))?$")


def infer_layers_per_block(unet_paths: Iterable[str]) -> int:
    """ResNet blocks per level of an ldm UNet, from its module (or weight) paths without the prefix.

    The first downsampler sits at `input_blocks.<layers_per_block + 1>.0.op`; a UNet without downsamplers
    has all its blocks on one level.
    """
    ops, inputs = [], []
    for path in unet_paths:
        m = re.match(r"^input_blocks\.(\d+)\.0\.(op|in_layers)\b", path)
        if m:
            (ops if m.group(2) == "op" else inputs).append(int(m.group(1)))
    if ops:
        return min(ops) - 1
    if inputs:
        return max(inputs)
    raise ValueError("not an ldm UNet: no input_blocks.N.0 ResNet or downsampler found")


def _after(path: Optional[str], head: str) -> Optional[str]:
    """What follows `head` in `path` (".weight", or "" for `head` itself); None when it is not under `head`."""
    if path is None:
        return None
    if path == head:
        return ""
    return path[len(head):] if path.startswith(head + ".") else None


def _resnet_part(rest: Optional[str]) -> Optional[str]:
    for ldm, diffusers in RESNET_PARTS.items():
        tail = _after(rest, ldm)
        if tail is not None:
            return diffusers + tail
    return None


def ldm_to_diffusers_unet_module(path: str, layers_per_block: int) -> Optional[str]:
    """Diffusers path of an ldm UNet module or parameter path; None when it has no counterpart."""
    for ldm, diffusers in TOP_LEVEL.items():
        tail = _after(path, ldm)
        if tail is not None:
            return diffusers + tail
    m = _MIDDLE.match(path)
    if m:
        index, rest = int(m.group(1)), m.group(2)
        if index == 1:
            return "mid_block.attentions.0" + (f".{rest}" if rest else "")
        part = _resnet_part(rest)
        return f"mid_block.resnets.{index // 2}.{part}" if part and index in (0, 2) else None
    m = _BLOCK.match(path)
    if not m:
        return None
    kind, n, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    per_level = layers_per_block + 1
    level, j = divmod(n - 1 if kind == "input_blocks" else n, per_level)
    prefix = f"down_blocks.{level}" if kind == "input_blocks" else f"up_blocks.{level}"
    if kind == "input_blocks" and j == layers_per_block:  # the level's downsampler: input_blocks.N.0.op
        tail = _after(rest, "op") if sub == 0 else None
        return f"{prefix}.downsamplers.0.conv{tail}" if tail is not None else None
    conv_tail = _after(rest, "conv")
    if kind == "output_blocks" and conv_tail is not None and sub in (1, 2):  # the level's upsampler
        return f"{prefix}.upsamplers.0.conv{conv_tail}"
    if sub == 0:
        part = _resnet_part(rest)
        return f"{prefix}.resnets.{j}.{part}" if part else None
    if sub == 1:
        return f"{prefix}.attentions.{j}" + (f".{rest}" if rest else "")
    return None


_DIF_RESNET = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.resnets\.(\d+)\.(.*)$")
_DIF_MID_RESNET = re.compile(r"^mid_block\.resnets\.(\d+)\.(.*)$")
_DIF_SAMPLER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv(.*)$")


def _ldm_resnet_part(rest: str) -> Optional[str]:
    for ldm, diffusers in RESNET_PARTS.items():
        tail = _after(rest, diffusers)
        if tail is not None:
            return ldm + tail
    return None


def diffusers_to_ldm_unet_module(path: str, layers_per_block: int) -> Optional[str]:
    """The ldm/sgm path of a diffusers UNet module outside the transformer blocks (ResNets, samplers, top
    level) - the inverse of `ldm_to_diffusers_unet_module` for SDXL's kohya names. An upsampler is taken
    to follow an attention block (`output_blocks.N.2.conv`), as in every SDXL UNet; None for other paths."""
    for ldm, diffusers in TOP_LEVEL.items():
        tail = _after(path, diffusers)
        if tail is not None:
            return ldm + tail
    per_level = layers_per_block + 1
    m = _DIF_MID_RESNET.match(path)
    if m:
        part = _ldm_resnet_part(m.group(2))
        return f"middle_block.{2 * int(m.group(1))}.{part}" if part else None
    m = _DIF_RESNET.match(path)
    if m:
        level, j, part = int(m.group(2)), int(m.group(3)), _ldm_resnet_part(m.group(4))
        if part is None:
            return None
        if m.group(1) == "down_blocks":
            return f"input_blocks.{1 + level * per_level + j}.0.{part}"
        return f"output_blocks.{level * per_level + j}.0.{part}"
    m = _DIF_SAMPLER.match(path)
    if m:
        level, tail = int(m.group(2)), m.group(4)
        if m.group(1) == "down_blocks":
            return f"input_blocks.{(level + 1) * per_level}.0.op{tail}"
        return f"output_blocks.{level * per_level + layers_per_block}.2.conv{tail}"
    return None
