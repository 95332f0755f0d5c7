"""A REFERENCE RE-IMPLEMENTATION (test-only) of how AUTOMATIC1111 v1.10.1's built-in Lora extension computes
a module's weight change from a file, written from its `extensions-builtin/Lora` sources: `network_lora.py`
(`lora_up`/`lora_down`, `rebuild_conventional`), `network_hada.py` (Hadamard product of two products),
`network_lokr.py` (`make_kron`), and `network.py` (`calc_scale`, `finalize_updown`,
`apply_weight_decompose` for `dora_scale`). It shares no code with lora_trainer: it reads the raw tensors
of one module, as the host does, so a test comparing it with the trained model's own change checks the
file against the host's formulas, not against our reader.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch


def rebuild_conventional(up: torch.Tensor, down: torch.Tensor, shape) -> torch.Tensor:
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return (up @ down).reshape(shape)


def make_kron(orig_shape, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous()).reshape(orig_shape)


def module_type(w: Dict[str, torch.Tensor]) -> str:
    """Which of the host's module types claims these keys (tried in the host's order)."""
    if "lora_up.weight" in w and "lora_down.weight" in w:
        return "lora"
    if all(k in w for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return "hada"
    if ("lokr_w1" in w or "lokr_w1_a" in w) and ("lokr_w2" in w or "lokr_w2_a" in w):
        return "lokr"
    raise AssertionError(f"no A1111 module type reads keys {sorted(w)}")


def calc_updown(w: Dict[str, torch.Tensor], orig_weight: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """The change A1111 adds to `orig_weight` for a module with file tensors `w` ({suffix: tensor}, the
    suffix without the module name, e.g. "lora_up.weight", "alpha"), all in fp32."""
    w = {k: v.to(torch.float32) for k, v in w.items()}
    orig_weight = orig_weight.to(torch.float32)
    kind = module_type(w)
    dim: Optional[int] = None
    if kind == "lora":
        up, down = w["lora_up.weight"], w["lora_down.weight"]
        dim = down.shape[0]
        output_shape = [up.size(0), down.size(1)]
        if len(down.shape) == 4:
            output_shape += down.shape[2:]
        updown = rebuild_conventional(up, down, output_shape)
    elif kind == "hada":
        w1a, w1b, w2a, w2b = w["hada_w1_a"], w["hada_w1_b"], w["hada_w2_a"], w["hada_w2_b"]
        dim = w1b.shape[0]
        output_shape = [w1a.size(0), w1b.size(1)]
        if len(w1b.shape) == 4:
            output_shape += w1b.shape[2:]
        updown = rebuild_conventional(w1a, w1b, output_shape) * rebuild_conventional(w2a, w2b, output_shape)
    else:
        if "lokr_w1" in w:
            w1 = w["lokr_w1"]
        else:
            w1 = w["lokr_w1_a"] @ w["lokr_w1_b"]
            dim = w["lokr_w1_b"].shape[0]
        if "lokr_w2" in w:
            w2 = w["lokr_w2"]
        else:
            w2 = w["lokr_w2_a"] @ w["lokr_w2_b"]
            dim = w["lokr_w2_b"].shape[0]
        output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if len(orig_weight.shape) == 4:
            output_shape = orig_weight.shape
        updown = make_kron(output_shape, w1, w2)
    return finalize_updown(updown, orig_weight, output_shape, w, dim, multiplier)


def finalize_updown(updown, orig_weight, output_shape, w, dim, multiplier):
    if len(output_shape) == 4:
        updown = updown.reshape(output_shape)
    if orig_weight.size().numel() == updown.size().numel():
        updown = updown.reshape(orig_weight.shape)
    alpha = w["alpha"].item() if "alpha" in w else None
    scale = alpha / dim if dim is not None and alpha is not None else 1.0  # calc_scale
    updown = updown * scale
    if "dora_scale" in w:
        updown = apply_weight_decompose(updown, orig_weight, w["dora_scale"], len(orig_weight.shape) - 1)
    return updown * multiplier


def apply_weight_decompose(updown, orig_weight, dora_scale, dora_norm_dims):
    merged = updown + orig_weight
    norm = (merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
            .reshape(merged.shape[1], *[1] * dora_norm_dims).transpose(0, 1))
    return merged * (dora_scale / norm) - orig_weight
