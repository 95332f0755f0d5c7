"""Adapters on `nn.MultiheadAttention` (OpenCLIP's text encoder as the WebUI holds it: SD2, SDXL's bigG).

q, k and v share one packed `in_proj_weight` [3d, d], so no Linear layer exists to wrap. Each of q, k, v
and out gets its own adapter part (the kind's `delta_part`), exactly as a transformers CLIP encoder has
four layers (kohya's `q_proj`, `k_proj`, `v_proj`, `out_proj`), and the attention runs with
`in_proj_weight + [dq; dk; dv]` and `out_proj.weight + dout` through `F.multi_head_attention_forward`.
The module's own forward is replaced by an instance attribute, which `remove()` takes away again: the
module, its parameters and their storage stay as they were. Adapter dropout does not apply here (the
delta is merged).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..adapters import AdapterKind, AdapterSpec

PARTS = ("q_proj", "k_proj", "v_proj", "out_proj")


class PackedAttention:
    """The four adapter parts of one MultiheadAttention and the forward that applies them."""

    def __init__(self, mha: nn.MultiheadAttention, kind: "AdapterKind", spec: "AdapterSpec"):
        if not mha._qkv_same_embed_dim:
            raise ValueError("adapters on MultiheadAttention need the packed in_proj (same q/k/v sizes)")
        d = mha.embed_dim
        device = mha.in_proj_weight.device
        self.mha = mha
        self.kind = kind
        self.parts = {part: kind.delta_part(d, d, spec, device) for part in PARTS}
        mha.forward = self.forward  # instance attribute: the class's forward is untouched

    def remove(self) -> None:
        """Give the module its own forward back."""
        self.mha.__dict__.pop("forward", None)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        mha = self.mha
        dtype = mha.in_proj_weight.dtype
        delta = self.kind.layer_delta
        in_proj = mha.in_proj_weight + torch.cat([delta(self.parts[p]) for p in PARTS[:3]]).to(dtype)
        out_proj = mha.out_proj.weight + delta(self.parts["out_proj"]).to(dtype)
        if mha.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, mha.embed_dim, mha.num_heads, in_proj, mha.in_proj_bias, mha.bias_k, mha.bias_v,
            mha.add_zero_attn, mha.dropout, out_proj, mha.out_proj.bias, training=mha.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (out.transpose(0, 1) if mha.batch_first else out), weights
