"""LoRA on `nn.MultiheadAttention` (OpenCLIP's text encoder as the WebUI holds it: SD2, SDXL's bigG).

q, k and v share one packed `in_proj_weight` [3d, d], so no Linear layer exists to wrap. Each of q, k, v
and out gets its own LoRA pair, exactly as in a transformers CLIP encoder (kohya's `q_proj`, `k_proj`,
`v_proj`, `out_proj`), and the attention runs with `in_proj_weight + [dq; dk; dv]` and
`out_proj.weight + dout` (d = scale * up @ down) through `F.multi_head_attention_forward`. The
module's own forward is replaced by an instance attribute, which `detach()` removes: the module, its
parameters and their storage stay as they were. LoRA dropout does not apply here (the delta is merged).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

PARTS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "default"


class SliceLora(nn.Module):
    """One LoRA pair with peft's attribute layout (lora_A / lora_B / scaling / lora_dropout per adapter)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, owner: "PackedAttentionLora"):
        super().__init__()
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(rank, out_features, bias=False)})
        self.lora_dropout = nn.ModuleDict({ADAPTER: nn.Identity()})
        self.scaling: Dict[str, float] = {ADAPTER: alpha / rank}
        nn.init.kaiming_uniform_(self.lora_A[ADAPTER].weight, a=math.sqrt(5))  # as peft
        nn.init.zeros_(self.lora_B[ADAPTER].weight)
        self._owner = [owner]  # a list: not registered as a submodule

    def delta(self) -> torch.Tensor:
        return self.scaling[ADAPTER] * (self.lora_B[ADAPTER].weight @ self.lora_A[ADAPTER].weight)

    def detach_lora(self) -> None:
        self._owner[0].detach()


class PackedAttentionLora:
    """The four LoRA pairs of one MultiheadAttention and the forward that applies them."""

    def __init__(self, mha: nn.MultiheadAttention, rank: int, alpha: float):
        if not mha._qkv_same_embed_dim:
            raise ValueError("LoRA on MultiheadAttention needs the packed in_proj (same q/k/v sizes)")
        d = mha.embed_dim
        device = mha.in_proj_weight.device
        self.mha = mha
        self.slices = {part: SliceLora(d, d, rank, alpha, self).to(device) for part in PARTS}
        mha.forward = self.forward  # instance attribute: the class's forward is untouched

    def detach(self) -> None:
        self.mha.__dict__.pop("forward", None)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        mha = self.mha
        dtype = mha.in_proj_weight.dtype
        in_proj = mha.in_proj_weight + torch.cat([self.slices[p].delta() for p in PARTS[:3]]).to(dtype)
        out_proj = mha.out_proj.weight + self.slices["out_proj"].delta().to(dtype)
        if mha.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, mha.embed_dim, mha.num_heads, in_proj, mha.in_proj_bias, mha.bias_k, mha.bias_v,
            mha.add_zero_attn, mha.dropout, out_proj, mha.out_proj.bias, training=mha.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (out.transpose(0, 1) if mha.batch_first else out), weights
