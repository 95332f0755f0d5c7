"""The contract of an adapter kind: `AdapterKind`, what one network shares (`AdapterSpec`) and one module read
from a file (`FileModule`).

An adapter kind (LoRA; LoCon, LoHa, LoKr and DoRA next) says how one layer of the model is adapted and
how that adaptation is stored, with the same verbs for every kind (peft's tuner layers and the WebUI's
`network_*.py` module types work the same way):

- on a model: `wrap` target layers in place (Linear / Conv2d, subclasses included) and `unwrap` them;
  `delta_part` builds a free-standing adapter for a slice of a fused weight (OpenCLIP's packed q/k/v);
  `parameters`, `set_multiplier`, `set_training`, `layer_delta` (the weight change a layer applies now);
- in a file: `suffixes` are the keys of one module (`<kohya name><suffix>`), `layer_tensors` /
  `load_layer_tensors` write and read a layer's tensors, `read_module` turns a file's tensors into a
  `FileModule` (rank, alpha, the weight delta: what merge, combine and resize work on);
- in the metadata and the config: `network_module` (kohya's `ss_network_module`), `check_args`
  (the config's `network_args`, refused with a message naming the key when the kind does not take it).
The planner counts a network's parameters through `parameters` on layers built on the `meta` device.

This module imports no torch: the config validates `network_type` without loading a kind.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class AdapterSpec:
    """What every adapted layer of one network shares: the kind, its rank (kohya's dim), alpha, dropout and
    the kind's own arguments (the config's `network_args`)."""

    kind: "AdapterKind"
    rank: int
    alpha: float
    dropout: float = 0.0
    args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """alpha / rank: the multiplier every kohya loader applies to a rank-based module's delta."""
        return self.alpha / self.rank


class FileModule(Protocol):
    """One module of an adapter file (all of its tensors read), whatever its kind."""

    suffix: str  # the key every module of its kind has (`<name><suffix>` names the module in messages)

    @property
    def rank(self) -> int: ...

    @property
    def alpha(self) -> float: ...

    @property
    def delta_shape(self) -> Tuple[int, ...]: ...

    def delta(self, weight: float = 1.0, dtype: "torch.dtype" = ...) -> "torch.Tensor":
        """`weight` times the change this module makes to its base weight, shaped like `delta_shape`."""

    def low_rank(self) -> Optional[Any]:
        """This module as LoRA factors (adapters/lora.py's LoraFactors: what combine and resize work on), or
        None when it has none."""


class AdapterKind(ABC):
    """One adapter kind; see the module docstring. Subclasses set the class attributes."""

    name: str = ""  # the config's network_type: "lora"
    title: str = ""  # "LoRA"
    network_module: str = ""  # kohya's ss_network_module: "networks.lora"
    suffixes: Tuple[str, ...] = ()  # the file keys of one module, after its kohya name; every module has the first

    def check_args(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        """The validated `network_args`; raise ConfigError naming a key this kind does not take."""
        return dict(args)

    def trains_convs(self, spec: AdapterSpec) -> bool:
        """Whether the network also adapts the UNet's ResNet blocks and samplers (LoCon-style conv targets)."""
        return False

    def spec_from_modules(self, modules: Mapping[str, Any], dropout: float = 0.0) -> AdapterSpec:
        """The spec of a network that has a file's modules (all of this kind): rank and alpha of the first."""
        first = modules[sorted(modules)[0]]
        return AdapterSpec(self, first.rank, first.alpha, dropout)

    def metadata(self, spec: AdapterSpec) -> Dict[str, str]:
        """kohya's `ss_network_*` entries for a network of this kind."""
        return {"ss_network_module": self.network_module, "ss_network_dim": str(spec.rank),
                "ss_network_alpha": _number(spec.alpha), "ss_network_args": json.dumps(dict(spec.args)),
                "ss_network_dropout": str(spec.dropout)}

    # ------------------------------------------------------------------ on a model
    @abstractmethod
    def wrap(self, root: "nn.Module", paths: Sequence[str], spec: AdapterSpec) -> Dict[str, "nn.Module"]:
        """Adapt the layers at `paths` under `root` in place (trainable adapter weights in fp32; the base
        layer keeps its parameter objects); returns {path: adapted layer}."""

    @abstractmethod
    def unwrap(self, layer: "nn.Module") -> "nn.Module":
        """The original layer that `layer` adapts (put back into the model when the network is removed)."""

    @abstractmethod
    def delta_part(self, in_features: int, out_features: int, spec: AdapterSpec,
                   device: Optional["torch.device"] = None) -> "nn.Module":
        """A free-standing adapter of an [out, in] weight slice whose change is added to a fused weight."""

    @abstractmethod
    def parameters(self, layer: "nn.Module") -> List["nn.Parameter"]:
        """The trainable parameters of one adapted layer (or delta part)."""

    @abstractmethod
    def set_multiplier(self, layer: "nn.Module", multiplier: float, spec: AdapterSpec) -> None:
        """Scale the layer's adaptation (0 = off, 1 = as trained), like `<lora:name:multiplier>`."""

    @abstractmethod
    def set_training(self, layer: "nn.Module", mode: bool) -> None:
        """Switch the layer's training-only behaviour (dropout) on or off."""

    @abstractmethod
    def is_training(self, layer: "nn.Module") -> bool:
        """Whether `set_training(layer, True)` is in effect."""

    @abstractmethod
    def layer_delta(self, layer: "nn.Module") -> "torch.Tensor":
        """The change the layer adds to its base weight now (multiplier included), shaped like that weight."""

    # ------------------------------------------------------------------ in a file
    @abstractmethod
    def layer_tensors(self, layer: "nn.Module", name: str, dtype: "torch.dtype",
                      spec: AdapterSpec) -> Dict[str, "torch.Tensor"]:
        """The file tensors of one adapted layer named `name` (weights in `dtype`, on the CPU)."""

    @abstractmethod
    def load_layer_tensors(self, layer: "nn.Module", name: str, tensors: Mapping[str, "torch.Tensor"]) -> None:
        """Copy module `name`'s tensors from a file into the layer; raise LoraFormatError on a shape mismatch."""

    @abstractmethod
    def read_module(self, name: str, parts: Mapping[str, "torch.Tensor"], source: str) -> FileModule:
        """Module `name` of file `source` from its tensors ({suffix: tensor}); raise LoraFormatError when they
        are incomplete or do not have this kind's shapes."""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
