"""Which modules get LoRA layers: kohya's defaults, found by walking a module tree.

LoCon-style kinds (adapters/lycoris.py, with conv_dim > 0) add `unet_conv_targets`: the ResNet blocks'
and samplers' layers, as kohya's and LyCORIS's conv targets.

UNet: every nn.Linear and 1x1 nn.Conv2d inside a transformer block container (diffusers
`Transformer2DModel`, ldm/sgm `SpatialTransformer`): attention q/k/v/out, proj_in/out, feed-forward.
Text encoder: every nn.Linear inside CLIP attention and MLP blocks (q/k/v/out_proj, fc1, fc2); in an
open_clip tower, each block's attention (packed q/k/v) and MLP (c_fc, c_proj).
"""
from __future__ import annotations

from typing import Iterable, List

from torch import nn

UNET_CONTAINERS = ("Transformer2DModel", "SpatialTransformer")
# LoCon-style conv targets (kohya's UNET_TARGET_REPLACE_MODULE_CONV2D_3X3, diffusers and ldm/sgm class names)
CONV_CONTAINERS = ("ResnetBlock2D", "Downsample2D", "Upsample2D", "ResBlock", "Downsample", "Upsample")
TEXT_CONTAINERS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")


def _is_target_layer(module: nn.Module, any_kernel: bool = False) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and (any_kernel or tuple(module.kernel_size) == (1, 1))


def find_targets(root: nn.Module, containers: Iterable[str], any_kernel: bool = False) -> List[str]:
    """Module paths (relative to root, in definition order) of the LoRA targets inside `containers` (Linear
    and 1x1 Conv2d layers; with `any_kernel` every Conv2d)."""
    containers = tuple(containers)
    found: List[str] = []
    seen = set()
    for name, module in root.named_modules():
        if type(module).__name__ not in containers:
            continue
        for child_name, child in module.named_modules():
            if child_name and _is_target_layer(child, any_kernel):
                path = f"{name}.{child_name}" if name else child_name
                if path not in seen:
                    seen.add(path)
                    found.append(path)
    return found


def unet_targets(unet: nn.Module) -> List[str]:
    return find_targets(unet, UNET_CONTAINERS)


def unet_conv_targets(unet: nn.Module) -> List[str]:
    """LoCon's extra UNet targets: every Conv2d and Linear of the ResNet blocks (3x3 convs, the 1x1 shortcut,
    the time-embedding projection) and of the down/up samplers."""
    return find_targets(unet, CONV_CONTAINERS, any_kernel=True)


def text_encoder_targets(text_encoder: nn.Module) -> List[str]:
    return find_targets(text_encoder, TEXT_CONTAINERS)


def open_clip_targets(tower: nn.Module, layers: int) -> List[str]:
    """An open_clip text tower's first `layers` blocks: each attention (a MultiheadAttention, which gets q/k/v/out
    LoRA pairs) and MLP Linear (c_fc, c_proj)."""
    return [f"transformer.resblocks.{i}.{leaf}" for i in range(layers) for leaf in ("attn", "mlp.c_fc", "mlp.c_proj")]
