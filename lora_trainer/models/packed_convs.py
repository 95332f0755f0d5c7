"""Frozen convolutions with their weights pre-packed for oneDNN (CPU training, bf16 or fp32).

On a CPU every `F.conv2d` call reorders the weight into oneDNN's blocked layout before it computes, and
its backward pass does so again for the transposed convolution. For the UNet's deep, weight-heavy layers
(1280 channels on a 4x4 or 8x8 latent) that reorder costs more than the arithmetic. A LoRA run never
changes these weights, so each is packed once, on its first call, with the shape it is called with.
What that gains per layer and per training step is measured in benchmarks/README.md.

The backward pass needs only the input's gradient (the weights are frozen): for stride 1, dilation 1 and
one group, the transposed convolution of the output gradient with the same weight and padding, run on a
second copy of the weight packed for it (oneDNN packs it straight from the weight, without a temporary
copy: a flipped-kernel convolution instead was a little faster on the deepest layers but its temporary
copies left more memory resident). Grouped convolutions stay as they are; strided fp32 ones run as GEMMs
(models/gemm_convs), as do, when packing `lean` (the fp32 default), the layers whose copies would cost the
most memory for the least time: the packed copies of SD1.5's UNet take 2.1 GiB in fp32, 0.24 GiB leanly.

Each packed layer gets an instance `forward` (models/layer_forwards), which `remove()` takes away. The packed
copies take twice the layers' weight memory (`packed_weight_bytes`), hence `decide_packing`.
`in_place` packing replaces the original weights instead of sitting beside them: once a layer's two packed
copies exist its `weight` parameter holds an empty tensor (the memory is freed), and `remove()` rebuilds the
exact original from the forward copy (a reorder is a permutation). Layers whose weight someone else reads
while training (DoRA's norms, `skip`) are not packed: packed beside their original they would hold three
copies (SD1.5 fp32 LoCon-DoRA, 3 steps: peak RSS 9.99 GiB), and a DoRA step is dominated by building
the weight-sized changes, not by the convolution's reorder.
"""
from __future__ import annotations

from typing import Collection, List, Optional, Tuple, Union

import torch
from torch import nn

from ..utils.device import Precision
from .gemm_convs import GemmConv, PointwiseLinear, is_pointwise, suits_gemm
from .layer_forwards import LayerForward, LayerForwards

PACKABLE_DTYPES = (torch.bfloat16, torch.float32)


def packing_available(device: torch.device, dtype: torch.dtype, autocast_dtype: Optional[torch.dtype] = None) -> bool:
    """True where packed convolutions run: a CPU with oneDNN, fp32 or bf16 weights (bf16 where oneDNN has it),
    computed in the weights' dtype (no autocast to another one)."""
    if autocast_dtype not in (None, dtype):
        return False
    ops = ("_convolution_pointwise", "_reorder_convolution_weight", "_convolution_transpose_pointwise",
           "_reorder_convolution_transpose_weight", "_is_mkldnn_bf16_supported")  # older torch lacks some
    return (torch.device(device).type == "cpu" and dtype in PACKABLE_DTYPES and torch.backends.mkldnn.is_available()
            and all(hasattr(torch.ops.mkldnn, op) for op in ops)
            and (dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def decide_packing(setting: Union[str, bool], torch_compile: bool, device: torch.device, precision: Precision,
                   need: int, available: Optional[int], lean_need: Optional[int] = None) -> Tuple[bool, bool, str]:
    """(pack, lean, message) for `pack_conv_weights`; the trainer and the planner both ask here. `need`: bytes
    of copies with every layer packed, `lean_need`: with the fp32 layers that `suits_gemm` run as GEMMs on
    their own weights (models/gemm_convs), `available`: bytes free. true packs every layer; auto packs
    leanly in fp32 (every layer in bf16, where GEMMs lose) when half the available memory holds the copies
    and says so when it does not (or cannot tell); false never packs."""
    if setting is False or torch_compile or not need or not packing_available(device, precision.base_dtype,
                                                                               precision.autocast_dtype):
        return False, False, ""
    if setting is True:
        return True, False, ""
    lean = precision.base_dtype == torch.float32 and lean_need is not None
    copies = lean_need if lean else need
    if available is not None and copies <= available // 2:
        return True, lean, ""
    room = "an unknown amount of" if available is None else f"{available / 2**30:.1f} GiB of"
    return False, False, (f"pack_conv_weights: off, its copies of the convolution weights ({copies / 2**30:.1f} "
                          f"GiB) need at most half the available memory and there is {room} it; steps are "
                          f"slower (pack_conv_weights: true packs anyway)")


def _plain_conv(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and tuple(conv.dilation) == (1, 1)
            and all(0 <= p <= k - 1 for p, k in zip(conv.padding, conv.kernel_size)))


def _packable_shape(conv: nn.Module) -> bool:
    return _plain_conv(conv) and tuple(conv.stride) == (1, 1)


def _frozen_on_cpu(conv: nn.Module) -> bool:
    return (not conv.weight.requires_grad and conv.weight.dtype in PACKABLE_DTYPES
            and (conv.bias is None or not conv.bias.requires_grad) and conv.weight.device.type == "cpu")


def _packable(conv: nn.Module) -> bool:
    return _packable_shape(conv) and _frozen_on_cpu(conv)


def _trained_pointwise(conv: nn.Module) -> bool:
    """A trainable 1x1 layer on the CPU (a LoRA factor of a 1x1 projection): a linear layer over the pixels."""
    return is_pointwise(conv) and conv.weight.requires_grad and conv.weight.device.type == "cpu"


def _strided_gemm(conv: nn.Module) -> bool:
    """A strided fp32 layer (not packable): a GEMM beats oneDNN's reorder on every call."""
    return (_plain_conv(conv) and _frozen_on_cpu(conv) and tuple(conv.stride) != (1, 1)
            and conv.weight.dtype == torch.float32 and conv.weight.is_contiguous())


def _gets_copies(conv: nn.Module, dtype: torch.dtype, lean: bool) -> bool:
    """Whether a packable layer is packed (else, `lean`, it runs as a GEMM on its own weight)."""
    return not (lean and dtype == torch.float32 and suits_gemm(conv))


def packed_weight_bytes(model: nn.Module, dtype: torch.dtype, in_place: bool = False,
                        skip: Collection[nn.Module] = (), lean: bool = False) -> int:
    """Memory packing adds to `model`'s frozen convolutions (but those of `skip`, as `PackedConvs`): two
    copies of each weight in `dtype`, less the original where it is packed `in_place`; `lean`: not for the
    layers that run as GEMMs (models/gemm_convs)."""
    skip_ids = {id(m) for m in skip}
    return sum((1 if in_place else 2) * dtype.itemsize * m.weight.numel() for m in model.modules()
               if _packable_shape(m) and not m.weight.requires_grad and id(m) not in skip_ids
               and _gets_copies(m, dtype, lean))


def _packed_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` in the weights' dtype and channels-last layout, as the packed kernels take it."""
    x = x.to(dtype)
    return x if x.is_contiguous(memory_format=torch.channels_last) else x.contiguous(memory_format=torch.channels_last)


class _FrozenConv(torch.autograd.Function):
    """Packed forward; backward gives the input's gradient only (weights frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "PackedConv") -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return layer.forward_packed(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.layer.input_grad(grad), None


class PackedConv(LayerForward):
    """One frozen Conv2d whose calls run on packed weights (packed lazily, once; `in_place`: then without
    the original)."""

    def __init__(self, conv: nn.Conv2d, in_place: bool = False):
        self.dtype = conv.weight.dtype
        self.padding = list(conv.padding)
        self.in_place = in_place
        self.channels_last = conv.weight.is_contiguous(memory_format=torch.channels_last)
        self.weight: Optional[torch.Tensor] = None  # packed for the forward convolution
        self.weight_t: Optional[torch.Tensor] = None  # packed for the transposed one (the input's gradient)
        super().__init__(conv)

    @property
    def released(self) -> bool:
        """The original weight is gone (packed in place); `remove()` brings it back."""
        return self.module.weight.numel() == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:  # an unbatched input: nn.Conv2d's own path, on the original weight
            weight = self.weight.to_dense() if self.released else self.module.weight
            return self.module._conv_forward(x, weight, self.module.bias)
        return _FrozenConv.apply(_packed_input(x, self.dtype), self)

    def forward_packed(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            self._pack(list(x.shape))
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.module.bias, self.padding, [1, 1], [1, 1], 1, "none", [], "")

    def _pack(self, input_shape: List[int]) -> None:
        """Both packed copies for inputs of `input_shape` (in place: then the original goes)."""
        w = self.module.weight.detach()
        kh, kw = w.shape[2:]
        # the reorders take a channels-last weight as it is (another layout they first copy, each of them)
        w = w.contiguous(memory_format=torch.channels_last)
        out_shape = [input_shape[0], w.shape[0], input_shape[2] + 2 * self.padding[0] - kh + 1,
                     input_shape[3] + 2 * self.padding[1] - kw + 1]
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(w, self.padding, [1, 1], [1, 1], 1, input_shape)
        self.weight_t = torch.ops.mkldnn._reorder_convolution_transpose_weight(
            w, self.padding, [0, 0], [1, 1], [1, 1], 1, out_shape)
        if self.in_place:
            self.module.weight.data = w.new_empty(0)

    def input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        grad = _packed_input(grad, self.dtype)
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            grad, self.weight_t, None, self.padding, [0, 0], [1, 1], [1, 1], 1, "none", [], "")

    def remove(self) -> None:
        super().remove()
        if self.released:
            dense = self.weight.to_dense()
            self.module.weight.data = dense.contiguous(memory_format=torch.channels_last) if self.channels_last \
                else dense
        self.weight = self.weight_t = None


class PackedConvs(LayerForwards):
    """The packed layers of one model (not those of `skip`); `remove()` puts every layer back. `in_place`:
    the packed copies replace the original weights. `lean`: fp32 layers that `suits_gemm` run as GEMMs on
    their own weights instead (no copies; models/gemm_convs)."""

    def __init__(self, model: nn.Module, in_place: bool = False, skip: Collection[nn.Module] = (),
                 lean: bool = False):
        skip_ids = {id(m) for m in skip}

        def make(conv: nn.Module) -> LayerForward:
            if _packable(conv) and _gets_copies(conv, conv.weight.dtype, lean):
                return PackedConv(conv, in_place)
            return PointwiseLinear(conv) if is_pointwise(conv) else GemmConv(conv)

        super().__init__(model, make, lambda conv: (_packable(conv) or _strided_gemm(conv) or _trained_pointwise(conv))
                         and id(conv) not in skip_ids)
