"""peft's LoRA Linear forward with the scaled sum folded into one matrix product.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: after the low-rank product it multiplies the
full-width output by the scale and adds it to the base output, and on the way back multiplies the full-width
gradient by the scale again, three passes over an output-sized tensor per layer and step. Here the up
projection writes into the base output directly, `addmm(base(x), lora_A(dropout(x)), lora_B.T, alpha=scaling)`,
and autograd's backward of `addmm` scales only the rank-sized gradient. Same values up to float rounding;
measured on the SD1.5 UNet in fp32 on 2 CPU cores (160 layers), median of 6 interleaved rounds: 2.61 -> 2.53 s
per step.

Anything this does not cover (peft's merged or disabled adapters, its DoRA and other variants, extra call
arguments, dtypes that differ outside autocast, as under the WebUI's manual cast, and torch.compile, which
fuses the sum itself) runs peft's own forward or sum.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


class FusedLoraLinear:
    """One peft `lora.Linear` layer (adapter `adapter`) whose calls fold the scale into `addmm`. It holds the
    layer weakly, so a layer the network drops is freed at once (no reference cycle through its forward)."""

    def __init__(self, layer: nn.Module, adapter: str):
        self.layer = weakref.ref(layer)
        self.adapter = adapter
        # peft's own variants (its DoRA, newer peft's lora_variant) compute more than the plain sum
        self.plain = adapter not in getattr(layer, "lora_variant", {}) and not getattr(layer, "use_dora", {}).get(adapter)
        layer.forward = self.forward  # instance attribute (models/layer_forwards): the class is untouched

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        layer = self.layer()
        if (args or kwargs or not self.plain or layer.merged or layer.disable_adapters
                or layer.active_adapters != [self.adapter]):
            return type(layer).forward(layer, x, *args, **kwargs)
        result = layer.base_layer(x)
        down, up = layer.lora_A[self.adapter], layer.lora_B[self.adapter]
        cast = getattr(layer, "_cast_input_dtype", None)  # peft's, honours cast_input_dtype_enabled (newer peft)
        x = cast(x, down.weight.dtype) if cast else x.to(down.weight.dtype)
        hidden = down(layer.lora_dropout[self.adapter](x))
        scaling = layer.scaling[self.adapter]
        same_dtype = hidden.dtype == result.dtype == up.weight.dtype or (
            hidden.dtype == result.dtype and _autocast_on(result.device.type))
        if not same_dtype or _compiling():
            # peft's sum: e.g. an fp16 base and an fp32 LoRA, or the WebUI's manual cast (it casts the weight
            # inside nn.Linear.forward); under torch.compile a constant alpha would recompile per multiplier
            return (result + up(hidden) * scaling).to(result.dtype)
        summed = torch.addmm(result.reshape(-1, result.shape[-1]), hidden.reshape(-1, hidden.shape[-1]),
                             up.weight.t(), alpha=scaling)
        return summed.view(result.shape)
