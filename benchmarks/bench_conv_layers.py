"""Benchmark: each frozen convolution of the full-size SD1.5 UNet, forward + input gradient, three ways:
packed once for oneDNN (models/packed_convs), as GEMMs on the weight as it is (models/gemm_convs), and
plain `F.conv2d` (oneDNN reorders the weight on every call). Prints per-layer times and the totals of the
choices `pack_conv_weights` can make, with the memory each adds. This is what `auto`'s lean split rests on.

Not a test. Run: PYTHONPATH=. python benchmarks/bench_conv_layers.py [--resolution 256] [--dtype float32]
(set ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 to time an AVX2-only CPU on a newer one).
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List

import torch
from torch import nn

from common import best_of
from lora_trainer.models.gemm_convs import GemmConv, PointwiseLinear, is_pointwise, suits_gemm
from lora_trainer.models.packed_convs import PackedConv


def unet_convolutions(resolution: int) -> List[Dict]:
    """(input shape, layer) of every convolution of diffusers' default UNet (SD1.5's) at `resolution` px."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)
    calls: List[Dict] = []
    for module in unet.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda m, args, out: calls.append(dict(x=list(args[0].shape), conv=m)))
    latent = resolution // 8
    unet(torch.empty(1, 4, latent, latent, device="meta"), torch.tensor([10], device="meta"),
         torch.empty(1, 77, 768, device="meta"))
    return calls


def time_layer(x_shape: List[int], meta_conv: nn.Conv2d, dtype: torch.dtype, repeats: int) -> Dict[str, float]:
    """Seconds of one forward + input gradient for each way that applies to the layer."""
    conv = nn.Conv2d(meta_conv.in_channels, meta_conv.out_channels, meta_conv.kernel_size, meta_conv.stride,
                     meta_conv.padding, bias=meta_conv.bias is not None).to(dtype).requires_grad_(False)
    x = torch.randn(x_shape, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    grad = torch.randn_like(conv(x.detach()))

    def step():
        x.grad = None
        conv(x).backward(grad)

    ways = {"plain": None}
    if conv.stride == (1, 1):
        ways["packed"] = lambda: PackedConv(conv)
    if dtype == torch.float32:
        ways["gemm"] = lambda: PointwiseLinear(conv) if is_pointwise(conv) else GemmConv(conv)  # as PackedConvs
    result = {}
    for name, make in ways.items():
        layer = make() if make else None
        result[name] = best_of(step, repeats)
        if layer is not None:
            layer.remove()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the per-layer rows here")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    rows = []
    for call in unet_convolutions(a.resolution):
        conv = call["conv"]
        row = dict(x=call["x"], weight=list(conv.weight.shape), stride=conv.stride[0],
                   bytes=conv.weight.numel() * dtype.itemsize, lean_gemm=dtype == torch.float32 and suits_gemm(conv),
                   **time_layer(call["x"], conv, dtype, a.repeats))
        rows.append(row)
        ways = "  ".join(f"{k} {row[k] * 1e3:7.2f} ms" for k in ("packed", "gemm", "plain") if k in row)
        print(f"x {str(row['x']):22s} w {str(row['weight'][:2]):13s} k{row['weight'][2]} s{row['stride']}  {ways}")
    totals = {"plain (pack_conv_weights: false)": (sum(r["plain"] for r in rows), 0)}
    every = sum(r.get("packed", r.get("gemm", r["plain"])) for r in rows)
    totals["every layer packed (true)"] = (every, sum(r["bytes"] for r in rows if "packed" in r))
    if dtype == torch.float32:
        lean = sum(r["gemm"] if r["lean_gemm"] or "packed" not in r else r["packed"] for r in rows)
        totals["lean (auto in fp32)"] = (lean, sum(r["bytes"] for r in rows if "packed" in r and not r["lean_gemm"]))
    print(f"\n{len(rows)} convolutions, {a.resolution} px, {a.dtype}, forward + input gradient, best of {a.repeats}")
    for name, (seconds, copies) in totals.items():
        print(f"  {name:34s} {seconds:6.3f} s per step   copies {copies / 2**30:5.2f} GiB")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(rows=rows, totals=totals), fh, indent=1)


if __name__ == "__main__":
    main()
