"""An adapter network: adapter layers of one kind on a bundle's modules, addressed by kohya names.

`AdapterNetwork.inject` adapts the target layers of each `NetworkComponent` with the spec's kind
(adapters/): the adapted layers keep their parameter objects, so no base weight is copied, and `remove`
puts the original layers back and leaves the model as it was. A target that is an
`nn.MultiheadAttention` (OpenCLIP in the WebUI) gets four modules named `<path>.q_proj`, `.k_proj`,
`.v_proj`, `.out_proj` (see packed_attention.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..adapters import AdapterSpec
from ..errors import LoraFormatError
from .packed_attention import PARTS, PackedAttention


@dataclass
class NetworkComponent:
    """One model part that gets adapter layers: its root module, target paths and kohya naming."""

    role: str  # "unet", "text_encoder", "text_encoder_2"
    module: nn.Module
    targets: List[str]  # module paths relative to `module`
    kohya_name: Callable[[str], str]  # module path -> kohya module name
    conv_targets: List[str] = field(default_factory=list)  # LoCon-style extra targets, for kinds that train convs


@dataclass
class AdaptedLayer:
    """Where one adapted layer sits in the model and its kohya name (a record, not an nn.Module)."""

    role: str
    path: str
    name: str  # kohya module name
    layer: nn.Module  # the kind's adapted layer (or part of a packed attention)
    parent: nn.Module
    attr: str


def layer_width(layer: nn.Module) -> Optional[int]:
    """The smaller side of an adapted Linear/Conv2d's weight matrix (the highest rank its update can have)."""
    base = getattr(layer, "base_layer", layer)
    if isinstance(base, nn.Linear):
        return min(base.in_features, base.out_features)
    if isinstance(base, nn.Conv2d):
        kh, kw = base.kernel_size
        return min(base.in_channels // base.groups * kh * kw, base.out_channels)
    return None


class AdapterNetwork:
    """The adapter layers of one training run (or one grid row)."""

    def __init__(self, layers: List[AdaptedLayer], spec: AdapterSpec, packed: Sequence[PackedAttention] = ()):
        self.layers = layers
        self.spec = spec
        self.kind = spec.kind
        self._packed = list(packed)
        self._by_name = {m.name: m for m in layers}

    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def alpha(self) -> float:
        return self.spec.alpha

    # ------------------------------------------------------------------ build / remove
    @classmethod
    def inject(cls, components: Sequence[NetworkComponent], spec: AdapterSpec) -> "AdapterNetwork":
        """Adapt every target of every component with `spec`'s kind (adapter weights in fp32)."""
        kind = spec.kind
        layers: List[AdaptedLayer] = []
        packed_all: List[PackedAttention] = []
        names: Dict[str, str] = {}
        convs = kind.trains_convs(spec)
        for comp in components:
            targets = comp.targets + (comp.conv_targets if convs else [])
            if not targets:
                continue
            packed = [p for p in targets if isinstance(comp.module.get_submodule(p), nn.MultiheadAttention)]
            plain = [p for p in targets if p not in packed]
            for path in plain + [f"{p}.{part}" for p in packed for part in PARTS]:
                name = comp.kohya_name(path)
                if name in names:
                    raise LoraFormatError(f"two modules map to the same kohya name {name}: {names[name]} and {path}")
                names[name] = path
            for path in packed:
                mha = comp.module.get_submodule(path)
                attention = PackedAttention(mha, kind, spec)
                packed_all.append(attention)
                for part, layer in attention.parts.items():
                    layers.append(AdaptedLayer(comp.role, f"{path}.{part}", comp.kohya_name(f"{path}.{part}"), layer,
                                               mha, ""))
            if not plain:
                continue
            wrapped = kind.wrap(comp.module, plain, spec)
            for path in plain:
                parent_path, _, attr = path.rpartition(".")
                parent = comp.module.get_submodule(parent_path) if parent_path else comp.module
                layers.append(AdaptedLayer(comp.role, path, comp.kohya_name(path), wrapped[path], parent, attr))
        if not layers:
            raise LoraFormatError("no LoRA target modules were found in the model")
        return cls(layers, spec, packed_all)

    def remove(self) -> None:
        """Put every original layer back (no adapter layer, instance forward or attribute is left behind)."""
        for attention in self._packed:
            attention.remove()
        for m in self.layers:
            if m.attr and getattr(m.parent, m.attr) is m.layer:
                setattr(m.parent, m.attr, self.kind.unwrap(m.layer))
        self.layers = []
        self._packed = []
        self._by_name = {}

    # ------------------------------------------------------------------ access
    def parameters(self, role: Optional[str] = None) -> List[nn.Parameter]:
        """Adapter parameters, optionally of one component role (unet / text_encoder ...)."""
        params: List[nn.Parameter] = []
        for m in self.layers:
            if role is None or m.role == role:
                params.extend(self.kind.parameters(m.layer))
        return params

    def parameter_count(self) -> int:
        """Trainable parameters of the whole network (what the planner sizes the training state by)."""
        return sum(p.numel() for p in self.parameters())

    def narrow_layers(self) -> List[Tuple[str, int]]:
        """(kohya name, width) of every layer whose smaller side is below the rank: its update can have rank
        at most that width, whatever the file stores."""
        widths = ((m.name, layer_width(m.layer)) for m in self.layers)
        return [(name, width) for name, width in widths if width is not None and width < self.rank]

    def base_layers_read(self) -> List[nn.Module]:
        """The base layers whose weights an adapted layer reads in its forward (DoRA's norms): their weights
        must stay where they are while training."""
        return [m.layer.base_layer for m in self.layers if getattr(m.layer, "reads_base_weight", False)]

    def builds_weight_sized_changes(self) -> bool:
        """Whether some adapted layer builds its whole weight change in each forward (LoHa, LoKr, DoRA):
        the trainer then maps large CPU blocks on their own (utils/malloc)."""
        return any(getattr(m.layer, "builds_full_change", False) for m in self.layers)

    def roles(self) -> List[str]:
        return sorted({m.role for m in self.layers})

    def count(self, role: Optional[str] = None) -> int:
        return sum(1 for m in self.layers if role is None or m.role == role)

    @property
    def training(self) -> bool:
        return bool(self.layers) and self.kind.is_training(self.layers[0].layer)

    def train(self, mode: bool = True) -> None:
        """Switch adapter dropout on (training) or off (evaluation, sampling)."""
        for m in self.layers:
            self.kind.set_training(m.layer, mode)

    @contextmanager
    def without_input_upcast(self) -> Iterator[None]:
        """Inside autocast, skip peft's cast of each adapter layer's input to its fp32 weights: autocast
        casts it straight back to half precision, so the result is identical and two activation copies per
        layer (and their gradients) are saved. Older peft always casts; there this changes nothing."""
        layers = [m.layer for m in self.layers if hasattr(m.layer, "cast_input_dtype_enabled")]
        before = [layer.cast_input_dtype_enabled for layer in layers]
        for layer in layers:
            layer.cast_input_dtype_enabled = False
        try:
            yield
        finally:
            for layer, value in zip(layers, before):
                layer.cast_input_dtype_enabled = value

    def set_multiplier(self, weight: float) -> None:
        """Scale the adapters (0 = off, 1 = as trained), like `<lora:name:weight>` in the WebUI."""
        for m in self.layers:
            self.kind.set_multiplier(m.layer, weight, self.spec)

    # ------------------------------------------------------------------ kohya tensors
    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> Dict[str, torch.Tensor]:
        """The file tensors of every module (for LoRA: `.lora_down.weight`, `.lora_up.weight` in `dtype`,
        `.alpha` as an fp32 scalar)."""
        out: Dict[str, torch.Tensor] = {}
        for m in self.layers:
            out.update(self.kind.layer_tensors(m.layer, m.name, dtype, self.spec))
        return out

    def load_kohya_state_dict(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Copy file tensors into the layers; every module of the file must exist here with its shape."""
        names = sorted({k.split(".", 1)[0] for k in tensors})
        for name in names:
            if name not in self._by_name:
                raise LoraFormatError(f"LoRA key {name} does not match any module of this model "
                                      f"(wrong model family, or trained with other target modules)")
        for m in self.layers:
            self.kind.load_layer_tensors(m.layer, m.name, tensors)
