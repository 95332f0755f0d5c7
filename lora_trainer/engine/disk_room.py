"""Free disk space before the model loads: the size of one LoRA checkpoint plus the training state,
estimated from the base model's tensor shapes (a safetensors header; nothing is loaded).

The LoRA's targets are kohya's (lora/targets.py): every Linear or 1x1 conv inside the UNet's transformer
blocks (attention, feed-forward, proj_in/out) and, with `train_text_encoder`, the text encoders'
attention and MLP layers. Each gets rank x (in + out) parameters. The state holds them in fp32 three
times (weights and AdamW's two moments). After the model loads, the run checks again with the exact count.
"""
from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

from ..errors import LoraTrainerError
from ..models.loading import safetensors_shapes

UNET_TARGET = re.compile(r"(transformer_blocks\.\d+\.(attn\d|ff)\..*|proj_in|proj_out)\.weight$")
TEXT_TARGET = re.compile(r"(self_attn\.(q|k|v|out)_proj|mlp\.(fc1|fc2|c_fc|c_proj)|attn\.out_proj)\.weight$")
PACKED_QKV = re.compile(r"attn\.in_proj_weight$")  # open_clip: q, k and v in one [3w, w] weight
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.", "text_encoder", "text_model.")
STATE_BYTES_PER_PARAM = 12  # fp32 weight + two AdamW moments
CLOSE_FACTOR = 3  # warn when less than this many times the need is free
Shapes = Dict[str, Tuple[int, ...]]


def base_model_shapes(base_model: str) -> Optional[Shapes]:
    """Shapes of a single .safetensors file or of a diffusers folder's UNet and text encoders; None when they
    cannot be read without loading (e.g. .ckpt)."""
    p = Path(base_model)
    files: Iterable[Path]
    if p.is_file():
        files = [p] if p.suffix.lower() == ".safetensors" else []
    else:
        files = [f for sub in ("unet", "text_encoder", "text_encoder_2") for f in sorted((p / sub).glob("*.safetensors"))]
    shapes: Shapes = {}
    try:
        for f in files:
            prefix = "" if f.parent.name == "unet" or f == p else f"{f.parent.name}."
            shapes.update({prefix + k: v for k, v in safetensors_shapes(f).items()})
    except (OSError, ValueError, struct.error):
        return None
    return shapes or None


def _pair_params(shape: Sequence[int], rank: int) -> int:
    if len(shape) == 2 or (len(shape) == 4 and tuple(shape[2:]) == (1, 1)):
        return rank * (shape[0] + shape[1])
    return 0


def lora_params(shapes: Shapes, rank: int, text_encoder: bool) -> int:
    """Parameters of a rank-`rank` LoRA on kohya's default targets of a model with these tensor shapes."""
    total = 0
    for key, shape in shapes.items():
        is_text = key.startswith(TEXT_PREFIXES)
        if is_text and not text_encoder:
            continue
        if is_text and PACKED_QKV.search(key) and len(shape) == 2:
            total += 3 * rank * (shape[0] // 3 + shape[1])
        elif (TEXT_TARGET if is_text else UNET_TARGET).search(key):
            total += _pair_params(shape, rank)
    return total


def need_bytes(params: int, save_itemsize: int) -> int:
    """One LoRA checkpoint plus the training state (its own fp32 copy and the optimizer's)."""
    return params * save_itemsize + params * (4 + STATE_BYTES_PER_PARAM)


def check_free_space(output_dir: Path, need: int, warn) -> None:
    """Refuse when less than `need` bytes are free in `output_dir`; `warn(text)` when it is close."""
    free = shutil.disk_usage(output_dir).free
    numbers = (f"{free / 2**20:.0f} MiB free in {str(output_dir)!r}; one checkpoint and the training state "
               f"need about {need / 2**20:.0f} MiB")
    if free < need:
        raise LoraTrainerError(f"not enough disk space: {numbers}. Free some space or choose another output_dir")
    if free < CLOSE_FACTOR * need:
        warn(f"disk space is tight: {numbers} (more with save_steps checkpoints)")


def check_room_for_run(output_dir: Path, lora_params_exact: int, save_itemsize: int, saves: int) -> None:
    """After the model loaded (the exact LoRA size): room for `saves` checkpoints and the training state."""
    lora_bytes = lora_params_exact * save_itemsize
    need = saves * lora_bytes + 4 * lora_params_exact * 4
    free = shutil.disk_usage(output_dir).free
    if free < need:
        raise LoraTrainerError(f"output_dir {str(output_dir)!r} has {free / 2**20:.0f} MiB free but the "
                               f"checkpoints and training state need about {need / 2**20:.0f} MiB; free some "
                               f"space, raise save_steps, or pick another output_dir")
