"""A LoRA network: peft LoRA layers injected into a bundle's modules, addressed by kohya names.

`LoraNetwork.inject` wraps the target modules with peft LoRA layers (down = lora_A, kaiming-uniform;
up = lora_B, zero; scale = alpha / rank). The wrapped base layers keep their parameter objects, so no
base weight is copied; `remove` puts the original modules back and leaves the model as it was.
A target that is an `nn.MultiheadAttention` (OpenCLIP in the WebUI) gets four LoRA modules named
`<path>.q_proj`, `.k_proj`, `.v_proj`, `.out_proj` (see packed_attention.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import LoraFormatError
from .packed_attention import PARTS, PackedAttentionLora, SliceLora


@dataclass
class LoraComponent:
    """One model part that gets LoRA layers: its root module, target paths and kohya naming."""

    role: str  # "unet", "text_encoder", "text_encoder_2"
    module: nn.Module
    targets: List[str]  # module paths relative to `module`
    kohya_name: Callable[[str], str]  # module path -> kohya lora name


@dataclass
class LoraModule:
    role: str
    path: str
    name: str  # kohya lora name
    layer: nn.Module  # peft LoraLayer
    parent: nn.Module
    attr: str


def _peft():
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    return LoraConfig, inject_adapter_in_model, LoraLayer


class LoraNetwork:
    """The LoRA layers of one training run."""

    ADAPTER = "default"

    def __init__(self, modules: List[LoraModule], rank: int, alpha: float, roots: Dict[str, nn.Module]):
        self.modules = modules
        self.rank = rank
        self.alpha = alpha
        self._roots = roots
        self._by_name = {m.name: m for m in modules}

    # ------------------------------------------------------------------ build / remove
    @classmethod
    def inject(cls, components: Sequence[LoraComponent], rank: int, alpha: float,
               dropout: float = 0.0) -> "LoraNetwork":
        """Wrap every target of every component with a peft LoRA layer (LoRA weights in fp32)."""
        LoraConfig, inject_adapter_in_model, LoraLayer = _peft()
        modules: List[LoraModule] = []
        names: Dict[str, str] = {}
        roots: Dict[str, nn.Module] = {}
        for comp in components:
            if not comp.targets:
                continue
            packed = [p for p in comp.targets if isinstance(comp.module.get_submodule(p), nn.MultiheadAttention)]
            plain = [p for p in comp.targets if p not in packed]
            for path in plain + [f"{p}.{part}" for p in packed for part in PARTS]:
                name = comp.kohya_name(path)
                if name in names:
                    raise LoraFormatError(f"two modules map to the same kohya name {name}: {names[name]} and {path}")
                names[name] = path
            roots[comp.role] = comp.module
            for path in packed:
                mha = comp.module.get_submodule(path)
                for part, layer in PackedAttentionLora(mha, rank, alpha).slices.items():
                    modules.append(LoraModule(comp.role, f"{path}.{part}", comp.kohya_name(f"{path}.{part}"), layer,
                                              mha, ""))
            if not plain:
                continue
            had_config = hasattr(comp.module, "peft_config")
            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=plain,
                                init_lora_weights=True)
            inject_adapter_in_model(config, comp.module, adapter_name=cls.ADAPTER)
            if not had_config and hasattr(comp.module, "peft_config"):
                delattr(comp.module, "peft_config")
            for path in plain:
                parent_path, _, attr = path.rpartition(".")
                parent = comp.module.get_submodule(parent_path) if parent_path else comp.module
                layer = getattr(parent, attr)
                if not isinstance(layer, LoraLayer):
                    raise LoraFormatError(f"peft did not wrap {comp.role}.{path} ({type(layer).__name__})")
                for sub in (layer.lora_A[cls.ADAPTER], layer.lora_B[cls.ADAPTER]):
                    sub.to(dtype=torch.float32)
                    sub.requires_grad_(True)
                modules.append(LoraModule(comp.role, path, comp.kohya_name(path), layer, parent, attr))
        if not modules:
            raise LoraFormatError("no LoRA target modules were found in the model")
        return cls(modules, rank, alpha, roots)

    def remove(self) -> None:
        """Put every original module back (no LoRA layer, hook or attribute is left behind)."""
        for m in self.modules:
            if isinstance(m.layer, SliceLora):
                m.layer.detach_lora()
            elif getattr(m.parent, m.attr) is m.layer:
                setattr(m.parent, m.attr, m.layer.get_base_layer())
        self.modules = []
        self._by_name = {}

    # ------------------------------------------------------------------ access
    def parameters(self, role: Optional[str] = None) -> List[nn.Parameter]:
        """LoRA parameters, optionally of one component role (unet / text_encoder ...)."""
        params: List[nn.Parameter] = []
        for m in self.modules:
            if role is None or m.role == role:
                params.extend([m.layer.lora_A[self.ADAPTER].weight, m.layer.lora_B[self.ADAPTER].weight])
        return params

    def narrow_layers(self) -> List[Tuple[str, int]]:
        """(kohya name, width) of every layer whose smaller side is below the rank: its update can have rank
        at most that width, whatever the file stores."""
        out = []
        for m in self.modules:
            a, b = m.layer.lora_A[self.ADAPTER].weight, m.layer.lora_B[self.ADAPTER].weight
            width = min(a.shape[1], b.shape[0])
            if width < self.rank:
                out.append((m.name, int(width)))
        return out

    def roles(self) -> List[str]:
        return sorted({m.role for m in self.modules})

    def count(self, role: Optional[str] = None) -> int:
        return sum(1 for m in self.modules if role is None or m.role == role)

    @property
    def training(self) -> bool:
        return bool(self.modules) and self.modules[0].layer.lora_dropout[self.ADAPTER].training

    def train(self, mode: bool = True) -> None:
        """Switch LoRA dropout on (training) or off (evaluation, sampling)."""
        for m in self.modules:
            m.layer.lora_dropout[self.ADAPTER].train(mode)

    @contextmanager
    def without_input_upcast(self) -> Iterator[None]:
        """Inside autocast, skip peft's cast of each LoRA layer's input to the fp32 LoRA weights: autocast
        casts it straight back to half precision, so the result is identical and two activation copies per
        layer (and their gradients) are saved. Older peft always casts; there this changes nothing."""
        layers = [m.layer for m in self.modules if hasattr(m.layer, "cast_input_dtype_enabled")]
        before = [layer.cast_input_dtype_enabled for layer in layers]
        for layer in layers:
            layer.cast_input_dtype_enabled = False
        try:
            yield
        finally:
            for layer, value in zip(layers, before):
                layer.cast_input_dtype_enabled = value

    def set_multiplier(self, weight: float) -> None:
        """Scale the LoRA path (0 = off, 1 = as trained), like `<lora:name:weight>` in the WebUI."""
        for m in self.modules:
            m.layer.scaling[self.ADAPTER] = weight * self.alpha / self.rank

    # ------------------------------------------------------------------ kohya tensors
    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> Dict[str, torch.Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight` (in `dtype`), `<name>.alpha` (fp32 scalar)."""
        out: Dict[str, torch.Tensor] = {}
        for m in self.modules:
            down = m.layer.lora_A[self.ADAPTER].weight.detach()
            up = m.layer.lora_B[self.ADAPTER].weight.detach()
            out[f"{m.name}.lora_down.weight"] = down.to("cpu", dtype).contiguous()
            out[f"{m.name}.lora_up.weight"] = up.to("cpu", dtype).contiguous()
            out[f"{m.name}.alpha"] = torch.tensor(float(self.alpha), dtype=torch.float32)
        return out

    def load_kohya_state_dict(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Copy kohya tensors into the layers; every module of the file must exist here with its shape."""
        names = sorted({k.split(".", 1)[0] for k in tensors})
        for name in names:
            if name not in self._by_name:
                raise LoraFormatError(f"LoRA key {name} does not match any module of this model "
                                      f"(wrong model family, or trained with other target modules)")
        for m in self.modules:
            down = tensors.get(f"{m.name}.lora_down.weight")
            up = tensors.get(f"{m.name}.lora_up.weight")
            if down is None or up is None:
                continue
            a, b = m.layer.lora_A[self.ADAPTER].weight, m.layer.lora_B[self.ADAPTER].weight
            if tuple(down.shape) != tuple(a.shape) or tuple(up.shape) != tuple(b.shape):
                raise LoraFormatError(
                    f"LoRA key {m.name}: shapes {tuple(down.shape)}/{tuple(up.shape)} do not fit the model's "
                    f"{tuple(a.shape)}/{tuple(b.shape)}")
            with torch.no_grad():
                a.copy_(down.to(a.dtype))
                b.copy_(up.to(b.dtype))
