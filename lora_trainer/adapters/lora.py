"""LoRA (kohya's `networks.lora`): a layer's weight W gets `scale * up @ down` (scale = alpha / rank).

On a model, layers are wrapped by peft (`down` = lora_A, kaiming-uniform; `up` = lora_B, zero); a slice of a
fused weight gets a `LoraPart` with peft's attribute layout, so every verb below works on both. In a
file, a module is `<name>.lora_down.weight` [r, in] (Conv: [r, in, kh, kw]), `<name>.lora_up.weight`
[out, r] ([out, r, 1, 1]) and `<name>.alpha` (0-dim; absent means alpha = rank, as loaders do); its
delta is `(up.flatten(1) @ down.flatten(1)).reshape(out, in[, kh, kw]) * alpha / r` (a conv followed by
a 1x1 conv is one conv whose kernel is that product), which also reads LoCon's conv modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError, LoraFormatError
from .base import AdapterKind, AdapterSpec
from .dora import with_dora
from .lora_forward import FusedLoraLinear

ADAPTER = "default"  # peft's adapter name for our one adapter
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


@dataclass
class LoraFactors:
    """One module's `down`, `up` and `alpha` (the scale is alpha / rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    suffix: ClassVar[str] = DOWN  # the key every LoRA module has

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def delta_shape(self) -> Tuple[int, ...]:
        """[out, in] (Linear) or [out, in, kh, kw] (Conv)."""
        return (int(self.up.shape[0]),) + tuple(self.down.shape[1:])

    def matrices(self, dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
        """(up [out, r] with the scale folded in, down [r, in * kh * kw]), so delta = up @ down."""
        return self.up.flatten(1).to(dtype) * self.scale, self.down.flatten(1).to(dtype)

    def delta(self, weight: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`weight` times this module's weight change, shaped like `delta_shape`."""
        up, down = self.matrices(dtype)
        return ((up * weight) @ down).reshape(self.delta_shape)

    def low_rank(self) -> "LoraFactors":
        return self

    def to(self, dtype: torch.dtype) -> "LoraFactors":
        return LoraFactors(self.down.to(dtype), self.up.to(dtype), self.alpha)

    def kohya_tensors(self, name: str) -> Dict[str, torch.Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`."""
        return {f"{name}{DOWN}": self.down.contiguous(), f"{name}{UP}": self.up.contiguous(),
                f"{name}{ALPHA}": torch.tensor(float(self.alpha))}


class LoraPart(nn.Module):
    """A LoRA pair for a slice of a fused weight, with peft's attribute layout (lora_A / lora_B / scaling /
    lora_dropout per adapter); its `delta()` is added to the slice."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(rank, out_features, bias=False)})
        self.lora_dropout = nn.ModuleDict({ADAPTER: nn.Identity()})
        self.scaling: Dict[str, float] = {ADAPTER: alpha / rank}
        nn.init.kaiming_uniform_(self.lora_A[ADAPTER].weight, a=math.sqrt(5))  # as peft
        nn.init.zeros_(self.lora_B[ADAPTER].weight)

    def delta(self) -> torch.Tensor:
        return self.scaling[ADAPTER] * (self.lora_B[ADAPTER].weight @ self.lora_A[ADAPTER].weight)


def _peft():
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    return LoraConfig, inject_adapter_in_model, LoraLayer


class LoraKind(AdapterKind):
    """Plain LoRA on Linear and 1x1 Conv2d layers (kohya's default targets)."""

    name = "lora"
    title = "LoRA"
    network_module = "networks.lora"
    suffixes = (DOWN, UP, ALPHA)

    def check_args(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        if args:
            raise ConfigError(f"config error: network_args: network_type lora takes no arguments (got "
                              f"{', '.join(map(str, args))}); for conv layers (conv_dim, conv_alpha) or DoRA "
                              f"(use_dora) choose network_type locon, loha or lokr")
        return {}

    # ------------------------------------------------------------------ on a model
    def wrap(self, root: nn.Module, paths: Sequence[str], spec: AdapterSpec) -> Dict[str, nn.Module]:
        LoraConfig, inject_adapter_in_model, LoraLayer = _peft()
        had_config = hasattr(root, "peft_config")
        config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                            target_modules=list(paths), init_lora_weights=True)
        inject_adapter_in_model(config, root, adapter_name=ADAPTER)
        if not had_config and hasattr(root, "peft_config"):
            delattr(root, "peft_config")
        layers = {}
        for path in paths:
            layer = root.get_submodule(path)
            if not isinstance(layer, LoraLayer):
                raise LoraFormatError(f"peft did not wrap {path} ({type(layer).__name__})")
            for sub in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
                sub.to(dtype=torch.float32)
                sub.requires_grad_(True)
            if isinstance(layer.get_base_layer(), nn.Linear):
                FusedLoraLinear(layer, ADAPTER)  # the scaled sum inside one addmm (adapters/lora_forward)
            layers[path] = layer
        return layers

    def unwrap(self, layer: nn.Module) -> nn.Module:
        return layer.get_base_layer()

    def delta_part(self, in_features: int, out_features: int, spec: AdapterSpec,
                   device: Optional[torch.device] = None) -> nn.Module:
        return LoraPart(in_features, out_features, spec.rank, spec.alpha).to(device)

    def parameters(self, layer: nn.Module) -> List[nn.Parameter]:
        return [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]

    def set_multiplier(self, layer: nn.Module, multiplier: float, spec: AdapterSpec) -> None:
        layer.scaling[ADAPTER] = multiplier * spec.alpha / spec.rank

    def set_training(self, layer: nn.Module, mode: bool) -> None:
        layer.lora_dropout[ADAPTER].train(mode)

    def is_training(self, layer: nn.Module) -> bool:
        return layer.lora_dropout[ADAPTER].training

    def layer_delta(self, layer: nn.Module) -> torch.Tensor:
        down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        if down.dim() == 2:
            return layer.scaling[ADAPTER] * (up @ down)
        return (layer.scaling[ADAPTER] * (up.flatten(1) @ down.flatten(1))).reshape(up.shape[0], *down.shape[1:])

    # ------------------------------------------------------------------ in a file
    def layer_tensors(self, layer: nn.Module, name: str, dtype: torch.dtype,
                      spec: AdapterSpec) -> Dict[str, torch.Tensor]:
        down = layer.lora_A[ADAPTER].weight.detach()
        up = layer.lora_B[ADAPTER].weight.detach()
        return {f"{name}{DOWN}": down.to("cpu", dtype).contiguous(), f"{name}{UP}": up.to("cpu", dtype).contiguous(),
                f"{name}{ALPHA}": torch.tensor(float(spec.alpha), dtype=torch.float32)}

    def load_layer_tensors(self, layer: nn.Module, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        down, up = tensors.get(f"{name}{DOWN}"), tensors.get(f"{name}{UP}")
        if down is None or up is None:
            return
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        if tuple(down.shape) != tuple(a.shape) or tuple(up.shape) != tuple(b.shape):
            raise LoraFormatError(
                f"LoRA key {name}: shapes {tuple(down.shape)}/{tuple(up.shape)} do not fit the model's "
                f"{tuple(a.shape)}/{tuple(b.shape)}")
        with torch.no_grad():
            a.copy_(down.to(a.dtype))
            b.copy_(up.to(b.dtype))

    def read_module(self, name: str, parts: Mapping[str, torch.Tensor], source: str) -> LoraFactors:
        if DOWN not in parts or UP not in parts:
            missing = "lora_up" if DOWN in parts else "lora_down"
            raise LoraFormatError(f"{source}: module {name} has no {missing}.weight; the file is incomplete")
        down, up = parts[DOWN], parts[UP]
        rank = down.shape[0]
        if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != rank or \
                (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
            raise LoraFormatError(f"{source}: module {name} has lora_down {tuple(down.shape)} and lora_up "
                                  f"{tuple(up.shape)}, which are not LoRA/LoCon shapes")
        alpha = float(parts[ALPHA].float().item()) if ALPHA in parts else float(rank)
        return with_dora(LoraFactors(down, up, alpha), parts, name, source)

    def spec_from_modules(self, modules: Mapping[str, Any], dropout: float = 0.0) -> AdapterSpec:
        """plain LoRA, or LoCon when a module adapts a 3x3 convolution or has `dora_scale` (same keys)."""
        first = modules[sorted(modules)[0]]
        convs = [m for m in modules.values() if len(m.delta_shape) == 4 and tuple(m.delta_shape[2:]) != (1, 1)]
        dora = any(getattr(m, "needs_base", False) for m in modules.values())
        if not convs and not dora:
            return AdapterSpec(self, first.rank, first.alpha, dropout)
        from . import default_adapter_kinds

        args = {"use_dora": dora, "conv_dim": convs[0].rank if convs else 0}
        if convs:
            args["conv_alpha"] = convs[0].alpha
        conv_ids = {id(m) for m in convs}  # by identity: the modules are dataclasses of tensors
        plain = [m for m in modules.values() if id(m) not in conv_ids] or [first]
        return AdapterSpec(default_adapter_kinds().get("locon"), plain[0].rank, plain[0].alpha, dropout, args)
