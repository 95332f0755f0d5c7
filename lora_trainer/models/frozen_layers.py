"""Train through frozen layers whose weights autograd must not hold: weights created under
`torch.inference_mode` (Forge Neo loads every weight that way: autograd refuses to save them, "Inference
tensors cannot be saved for backward") or cast to the compute dtype on every call (a saved cast would be a
second copy of the model by the end of the forward pass).

`FrozenLayerForwards(model, fetch)` gives every `nn.Linear`, `nn.Conv2d`, `nn.LayerNorm` and `nn.GroupNorm` of
`model` an instance forward (models/layer_forwards): without gradients, or for an input that needs none, the
layer's own class forward runs unchanged. For an input that needs gradients, a custom autograd function
runs that same class forward under `no_grad` (so the output is bit-identical to the host's) and saves no
weight; on the way back it fetches the weights again with `fetch(layer, x)` (the host's own cast) and
computes the input's gradient: `grad @ W` for Linear, `conv2d_input` for Conv2d, and for the norms (and a
convolution with a padding mode `conv2d_input` does not know) a recomputation on aliases of the weights
that share their storage (`_plain`), so nothing the size of a weight is copied. Install it before adapter
layers are added (their own Linear layers train normally); `remove()` puts every layer back.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layer_forwards import LayerForward, LayerForwards

WeightFetch = Callable[[nn.Module, torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]
FROZEN_KINDS = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm)


def own_weights(layer: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The default fetch: the layer's own weight and bias, on the input's device."""
    return layer.weight.to(x.device), None if layer.bias is None else layer.bias.to(x.device)


def _plain(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A tensor autograd may save that shares `t`'s storage (an inference tensor is aliased, never copied)."""
    if t is None or not t.is_inference():
        return t
    alias = torch.empty(0, dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _recompute(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The layer's function on `x` with the given weights (autograd-visible), in the weights' dtype."""
    w, b = _plain(weight), _plain(bias)
    xw = x.to(w.dtype) if w is not None else x
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(xw, layer.normalized_shape, w, b, layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(xw, layer.num_groups, w, b, layer.eps)
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(xw, w, b)
    return F.linear(xw, w, b)


class _FrozenCall(torch.autograd.Function):
    """out = the layer's class forward (no weight saved); d(out)/dx from weights fetched again."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, frozen: "FrozenLayer") -> torch.Tensor:
        ctx.frozen = frozen
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        if frozen.recomputes:
            ctx.save_for_backward(x)
        return frozen.class_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        frozen: FrozenLayer = ctx.frozen
        layer = frozen.module
        if frozen.recomputes:
            (x,) = ctx.saved_tensors
            with torch.enable_grad():
                x_ = x.detach().requires_grad_(True)
                weight, bias = frozen.fetch(layer, x_)
                out = _recompute(layer, x_, weight, bias)
                (dx,) = torch.autograd.grad(out, x_, grad.to(out.dtype))
            return dx.to(ctx.x_dtype), None
        probe = torch.empty(0, dtype=grad.dtype, device=grad.device)
        weight = frozen.fetch(layer, probe)[0].to(grad.dtype)
        if isinstance(layer, nn.Conv2d):
            dx = torch.nn.grad.conv2d_input(ctx.x_shape, weight, grad, layer.stride, layer.padding,
                                            layer.dilation, layer.groups)
        else:
            dx = grad.matmul(weight)
        return dx.to(ctx.x_dtype), None


class FrozenLayer(LayerForward):
    """One frozen layer whose backward never holds its weights (see the module docstring)."""

    def __init__(self, module: nn.Module, fetch: WeightFetch):
        self.fetch = fetch
        conv_formula = isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str)
        self.recomputes = not (isinstance(module, nn.Linear) or conv_formula)
        super().__init__(module)

    def class_forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return type(self.module).forward(self.module, x)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not (torch.is_grad_enabled() and x.requires_grad):
            return type(self.module).forward(self.module, x, *args, **kwargs)
        return _FrozenCall.apply(x, self)


class FrozenLayerForwards(LayerForwards):
    """FrozenLayer forwards on every Linear / Conv2d / LayerNorm / GroupNorm of `model` (see the docstring)."""

    def __init__(self, model: nn.Module, fetch: WeightFetch = own_weights):
        super().__init__(model, lambda m: FrozenLayer(m, fetch), lambda m: isinstance(m, FROZEN_KINDS))
