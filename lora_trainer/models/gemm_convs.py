"""Frozen fp32 convolutions computed as matrix products on their own weights (CPU, no copy of the weight).

oneDNN reorders a plain weight into its blocked layout on every call, and packing it once (models/
packed_convs) keeps two blocked copies, one per direction. For the layers where the weight is large next to
the activation (1x1 kernels, and the UNet's 1280-channel layers on an 8x8 or 4x4 latent) a matrix product
on the weight as it is comes within a few percent of the packed kernels in fp32 and needs no copy:

- forward: `unfold(x)[pixels, C*kh*kw] @ W.T` (a plain 1x1 kernel: `PointwiseLinear`, `F.linear` over the
  pixels of the channels-last input, which autograd differentiates as it is);
- backward (the input's gradient only, the weight is frozen): `grad[pixels, O] @ W` gives each kernel
  tap's contribution, added into the (padded) input at that tap's offset.

Measured per layer on the SD1.5 UNet's shapes at 256 px, 2-core Xeon limited to AVX2
(`benchmarks/bench_conv_layers.py`, forward + input gradient): the 1x1 layers (as `PointwiseLinear`) take
0.89-1.31x the packed ones' time, the 3x3 layers with 1280 output channels 0.90-1.24x, narrower 3x3 layers up
to 10x (they stay packed), and the strided layers, which oneDNN cannot pack, 9 ms instead of 81 ms for the
deepest. Lean in all: 1.13 s per step against 1.10 s with every layer packed, for 0.24 GiB of copies instead
of 2.12 GiB. In bf16
with AMX the packed kernels are three times faster than GEMMs, so there every layer is packed.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layer_forwards import LayerForward

GEMM_MIN_OUT_CHANNELS = 1280  # 3x3 layers this wide run as GEMMs in fp32; narrower ones are packed


def suits_gemm(conv: nn.Conv2d) -> bool:
    """Layers that lose little in fp32 as GEMMs and whose packed copies would cost the most memory."""
    return conv.weight.is_contiguous() and (tuple(conv.kernel_size) == (1, 1)
                                            or conv.out_channels >= GEMM_MIN_OUT_CHANNELS)


class _FrozenGemmConv(torch.autograd.Function):
    """GEMM forward; backward gives the input's gradient only (weights frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "GemmConv") -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        ctx.input_hw = tuple(x.shape[2:])
        return layer.forward_gemm(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.layer.input_grad(grad, ctx.input_hw), None


def _pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N*H*W, C] (a view for a channels-last tensor)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class GemmConv(LayerForward):
    """One frozen Conv2d (one group, no dilation) whose calls are matrix products on its weight, viewed as
    [O, C*kh*kw]."""

    def __init__(self, conv: nn.Conv2d):
        self.padding = tuple(conv.padding)
        self.kernel = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        super().__init__(conv)

    @property
    def matrix(self) -> torch.Tensor:
        w = self.module.weight
        return w.view(w.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:  # an unbatched input: nn.Conv2d's own path
            return self.module._conv_forward(x, self.module.weight, self.module.bias)
        return _FrozenGemmConv.apply(x.to(self.module.weight.dtype), self)

    def forward_gemm(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        (kh, kw), (ph, pw), (sh, sw) = self.kernel, self.padding, self.stride
        bias = self.module.bias
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # [N, C*kh*kw, pixels]
        out = cols.transpose(1, 2).reshape(-1, cols.shape[1]) @ self.matrix.t()  # one GEMM, the weight as it is
        if bias is not None:
            out += bias
        return out.view(n, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1, -1).permute(0, 3, 1, 2)

    def input_grad(self, grad: torch.Tensor, input_hw: Tuple[int, int]) -> torch.Tensor:
        n, _, ho, wo = grad.shape
        (kh, kw), (ph, pw), (sh, sw), (h, w) = self.kernel, self.padding, self.stride, input_hw
        taps = (_pixel_rows(grad) @ self.matrix).view(n, ho, wo, -1, kh * kw)  # [.., C, tap]
        padded = grad.new_zeros(n, h + 2 * ph, w + 2 * pw, taps.shape[3])
        for tap in range(kh * kw):
            dy, dx = divmod(tap, kw)
            padded[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw] += taps[..., tap]
        return padded[:, ph:ph + h, pw:pw + w].permute(0, 3, 1, 2)


class PointwiseLinear(LayerForward):
    """A 1x1 Conv2d (stride 1, no padding), trainable or not, whose calls are `F.linear` over the pixels: the
    same values and gradients, the weight's included, without oneDNN's reorders on every call (frozen 1x1
    layers when lean; LoRA's own factors on the UNet's 1x1 projections: ~0.1 s of a 2.6 s fp32 SD1.5 step
    at 256 px)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return self.module._conv_forward(x, self.module.weight, self.module.bias)
        weight = self.module.weight
        out = F.linear(x.permute(0, 2, 3, 1), weight.view(weight.shape[0], weight.shape[1]), self.module.bias)
        return out.permute(0, 3, 1, 2)


def is_pointwise(conv: nn.Module) -> bool:
    """A plain 1x1 Conv2d that `PointwiseLinear` computes exactly."""
    return (type(conv) is nn.Conv2d and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (0, 0) and conv.groups == 1 and conv.padding_mode == "zeros")
