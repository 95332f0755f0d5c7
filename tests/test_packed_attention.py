"""LoRA on nn.MultiheadAttention's packed in_proj: the same as merging q/k/v/out deltas into the weights."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lora_trainer.adapters import make_spec
from lora_trainer.network.network import AdapterNetwork, NetworkComponent


@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_lora_equals_merged_weights_and_is_removed_cleanly(batch_first):
    torch.manual_seed(0)
    root = nn.Module()
    root.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    root.requires_grad_(False)
    before = copy.deepcopy(root.state_dict())
    x = torch.randn(5, 3, 16)
    mask = torch.full((5, 5), float("-inf")).triu_(1) if not batch_first else None
    plain = root.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    net = AdapterNetwork.inject([NetworkComponent("text_encoder", root, ["attn"], lambda p: f"lora_te_{p}")],
                                make_spec(rank=2, alpha=1.0))
    assert sorted(m.name for m in net.layers) == [f"lora_te_attn.{p}" for p in
                                                   ("k_proj", "out_proj", "q_proj", "v_proj")]
    assert torch.equal(root.attn(x, x, x, need_weights=False, attn_mask=mask)[0], plain)  # up = 0 at start
    for m in net.layers:
        nn.init.normal_(m.layer.lora_B["default"].weight)
    with_lora = root.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    merged = copy.deepcopy(root.attn)
    merged.__dict__.pop("forward")
    deltas = {m.path.rsplit(".", 1)[1]: m.layer.delta().detach() for m in net.layers}
    with torch.no_grad():
        merged.in_proj_weight += torch.cat([deltas["q_proj"], deltas["k_proj"], deltas["v_proj"]])
        merged.out_proj.weight += deltas["out_proj"]
    assert torch.allclose(with_lora, merged(x, x, x, need_weights=False, attn_mask=mask)[0], atol=1e-5)

    with_lora.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert root.attn.in_proj_weight.grad is None  # the base weights stay frozen
    net.remove()
    assert "forward" not in root.attn.__dict__
    assert all(torch.equal(v, root.state_dict()[k]) for k, v in before.items())
