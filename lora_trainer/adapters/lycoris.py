"""What the LyCORIS kinds (LoCon, LoHa, LoKr) share: the adapted layer, the `network_args`, the verbs.

Why our own small layers and not the `lycoris-lora` package or peft's LoHa/LoKr: each kind's weight change
is a few lines (the hosts' own loaders are one small file per format), writing it in exactly the form A1111
v1.10.1 and Forge Neo rebuild it makes "what you trained is what the host applies" hold by construction,
and neither library fits: `lycoris-lora` is not installed in a WebUI (adding it would add packages to the
host's venv) and its DoRA normalises along the other axis by default; peft 0.13 (the WebUI pin) has
LoHa/LoKr but its DoRA is per output row and its LoKr factorisation and file keys differ.

A kind supplies `make_factors` (an nn.Module whose `matrix()` is the unscaled change as [out, in*kh*kw],
`scaled` says whether alpha / rank applies, `tensors`/`load` its file keys) and `read_factors` (the same
from a file). `WeightAdapter` wraps a Linear or Conv2d: output = base(x) + op(dropout(x), multiplier *
change), where change = scale * matrix, or with DoRA (adapters/dora.py) `rescaled(W + that) - W`, the
exact change the hosts compute from the file.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError, LoraFormatError
from .base import AdapterKind, AdapterSpec
from .dora import DORA_SCALE, initial_scale, rescaled_delta, with_dora

ALPHA = ".alpha"
COMMON_ARGS = {"conv_dim": int, "conv_alpha": float, "use_dora": bool}


class WeightAdapter(nn.Module):
    """A Linear / Conv2d (`base_layer`, kept as it is) with a kind's factors and, with DoRA, `dora_scale`.
    Without a base layer (a slice of OpenCLIP's packed q/k/v) it only holds the change."""

    def __init__(self, base: Optional[nn.Module], factors: nn.Module, weight_shape: Tuple[int, ...], alpha: float,
                 dropout: float, dora: bool):
        super().__init__()
        self.base_layer = base
        self.factors = factors
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.alpha = float(alpha)
        self.multiplier = 1.0
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.dropout.train(False)
        self.dora_scale = nn.Parameter(initial_scale(base.weight)) if dora else None

    @property
    def reads_base_weight(self) -> bool:
        """DoRA's change depends on the base weight: it must stay readable while training."""
        return self.dora_scale is not None

    @property
    def builds_full_change(self) -> bool:
        """Whether the forward builds the weight-sized change (LoHa, LoKr, DoRA) rather than going through
        the factors (LoCon)."""
        return self.dora_scale is not None or not hasattr(self.factors, "forward_change")

    @property
    def scale(self) -> float:
        """alpha / rank where the format has a rank (A1111: 1 when it has none, e.g. a full-matrix LoKr)."""
        return self.alpha / self.factors.rank if self.factors.scaled else 1.0

    def change(self) -> torch.Tensor:
        """The weight change at multiplier 1 (fp32, shaped like the base weight)."""
        delta = (self.factors.matrix() * self.scale).reshape(self.weight_shape)
        if self.dora_scale is None:
            return delta
        return rescaled_delta(self.base_layer.weight.to(torch.float32), delta, self.dora_scale)

    def delta(self) -> torch.Tensor:
        return self.multiplier * self.change()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.base_layer
        out = base(x, *args, **kwargs)
        if self.multiplier == 0:
            return out
        xin = self.dropout(x)
        if not self.builds_full_change:
            return out + self.factors.forward_change(xin, base, self.scale * self.multiplier).to(out.dtype)
        if torch.is_grad_enabled():  # keep only the input; the full-size change is rebuilt in the backward
            extra = checkpoint(self.full_change_output, xin, use_reentrant=False)
        else:
            extra = self.full_change_output(xin)
        return out + extra.to(out.dtype)

    def full_change_output(self, x: torch.Tensor) -> torch.Tensor:
        """op(x, change) with the whole weight-sized change built first (LoHa, LoKr, DoRA).

        The forward runs this under activation checkpointing: otherwise autograd keeps the change and its
        factor products (three weight-sized tensors per layer) until the backward, about three copies of
        the model's adapted weights in all (LoHa in place on SD1.5 grew the WebUI by 17 GiB). LyCORIS's
        own LoHa keeps only the factors for the same reason. The recomputation gives the same numbers."""
        base = self.base_layer
        weight = self.delta().to(x.dtype)  # under autocast F.linear / F.conv2d cast both to its dtype
        if isinstance(base, nn.Conv2d):
            return F.conv2d(x, weight, None, base.stride, base.padding, base.dilation, base.groups)
        return F.linear(x, weight)


class MatrixModule:
    """A module of a LyCORIS file: its unscaled change as a matrix [out, in*kh*kw], scale alpha / rank.
    The matrix is built when asked for (`matrix` is a function): a file's changes all built at once are as
    large as the model (fp32 SDXL: ~10 GB), and merge and verify need one module at a time."""

    def __init__(self, suffix: str, matrix: Callable[[], torch.Tensor], shape: Tuple[int, int], rank: int,
                 alpha: float, scaled: bool):
        self.suffix = suffix
        self._matrix = matrix
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaled = scaled
        self.delta_shape = tuple(int(s) for s in shape)

    def delta(self, weight: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale = self.alpha / self.rank if self.scaled else 1.0
        return self._matrix().to(dtype) * (weight * scale)

    def low_rank(self) -> None:
        return None


def layer_rank(layer: nn.Module, spec: AdapterSpec) -> Tuple[int, float]:
    """(rank, alpha) for one layer: `conv_dim` / `conv_alpha` for a kernel larger than 1x1, else the network's."""
    if isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) != (1, 1):
        return int(spec.args["conv_dim"]), float(spec.args["conv_alpha"])
    return spec.rank, spec.alpha


def weight_dims(shape: Sequence[int]) -> Tuple[int, int, int]:
    """(out, in, kh * kw) of a Linear or Conv2d weight shape."""
    kernel = 1
    for s in shape[2:]:
        kernel *= int(s)
    return int(shape[0]), int(shape[1]), kernel


class LycorisKind(AdapterKind):
    """The verbs of a LyCORIS kind on top of `make_factors` / `read_factors` (see the module docstring)."""

    network_module = "lycoris.kohya"
    algo = ""  # LyCORIS's algo name in ss_network_args
    extra_args: Dict[str, type] = {}
    factor_suffixes: Tuple[str, ...] = ()  # the kind's own file keys (alpha and dora_scale come on top)

    @property
    def suffixes(self) -> Tuple[str, ...]:  # type: ignore[override]
        return self.factor_suffixes + (ALPHA, DORA_SCALE)

    # ------------------------------------------------------------------ the kind supplies
    def make_factors(self, out: int, inp: int, kernel: Tuple[int, ...], rank: int, spec: AdapterSpec) -> nn.Module:
        raise NotImplementedError

    def read_factors(self, name: str, parts: Mapping[str, torch.Tensor],
                     source: str) -> Tuple[Callable[[], torch.Tensor], Tuple[int, int], int, bool]:
        """(a function building the unscaled change matrix [out, in*kh*kw] in fp32, that matrix's shape, rank,
        scaled) of a file's module; the shapes are checked here."""
        raise NotImplementedError

    # ------------------------------------------------------------------ config and metadata
    def check_args(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        allowed = {**COMMON_ARGS, **self.extra_args}
        out: Dict[str, Any] = {}
        for key, value in args.items():
            if key not in allowed:
                raise ConfigError(f"config error: network_args: network_type {self.name} takes "
                                  f"{', '.join(allowed)}; not {key!r}")
            out[key] = _coerce(key, value, allowed[key])
        return out

    def resolved(self, spec: AdapterSpec) -> Dict[str, Any]:
        """The arguments with their defaults: conv_dim = rank, conv_alpha = alpha, use_dora false."""
        args = dict(spec.args)
        args.setdefault("conv_dim", spec.rank)
        args.setdefault("conv_alpha", float(args["conv_dim"]) if "conv_dim" in spec.args else spec.alpha)
        args.setdefault("use_dora", False)
        return args

    def metadata(self, spec: AdapterSpec) -> Dict[str, str]:
        args = self.resolved(spec)
        written = {"algo": self.algo, "conv_dim": str(args["conv_dim"]), "conv_alpha": _text(args["conv_alpha"])}
        written.update({k: _text(args[k]) for k in self.extra_args if k in args})
        if args["use_dora"]:
            written["dora_wd"] = "True"  # LyCORIS's name for DoRA
        meta = super().metadata(spec)
        meta["ss_network_args"] = json.dumps(written)
        return meta

    def trains_convs(self, spec: AdapterSpec) -> bool:
        return int(self.resolved(spec)["conv_dim"]) > 0

    def spec_from_modules(self, modules: Mapping[str, Any], dropout: float = 0.0) -> AdapterSpec:
        """Rank and alpha of the first module; `dora_scale` says use_dora (conv_dim and factor come from the
        file's ss_network_args, see AdapterRegistry.file_spec)."""
        spec = super().spec_from_modules(modules, dropout)
        dora = any(getattr(m, "needs_base", False) for m in modules.values())
        return AdapterSpec(self, spec.rank, spec.alpha, dropout, {"use_dora": dora})

    def full_spec(self, spec: AdapterSpec) -> AdapterSpec:
        return AdapterSpec(spec.kind, spec.rank, spec.alpha, spec.dropout, self.resolved(spec))

    # ------------------------------------------------------------------ on a model
    def wrap(self, root: nn.Module, paths: Sequence[str], spec: AdapterSpec) -> Dict[str, nn.Module]:
        spec = self.full_spec(spec)
        layers: Dict[str, nn.Module] = {}
        for path in paths:
            layer = root.get_submodule(path)
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                raise LoraFormatError(f"{self.title} adapts Linear and Conv2d layers; {path} is {type(layer).__name__}")
            rank, alpha = layer_rank(layer, spec)
            shape = tuple(layer.weight.shape)
            out, inp, _ = weight_dims(shape)
            factors = self.make_factors(out, inp, shape[2:], rank, spec)
            factors.to(device=layer.weight.device, dtype=torch.float32)
            adapted = WeightAdapter(layer, factors, shape, alpha, spec.dropout, bool(spec.args["use_dora"]))
            parent_path, _, attr = path.rpartition(".")
            setattr(root.get_submodule(parent_path) if parent_path else root, attr, adapted)
            layers[path] = adapted
        return layers

    def unwrap(self, layer: nn.Module) -> nn.Module:
        return layer.base_layer

    def delta_part(self, in_features: int, out_features: int, spec: AdapterSpec,
                   device: Optional[torch.device] = None) -> nn.Module:
        spec = self.full_spec(spec)
        if spec.args["use_dora"]:
            raise ConfigError("config error: network_args: use_dora does not work on OpenCLIP's packed attention "
                              "(SD2 and SDXL text encoders in the WebUI); train the UNet only (train_text_encoder: false)")
        factors = self.make_factors(out_features, in_features, (), spec.rank, spec)
        return WeightAdapter(None, factors, (out_features, in_features), spec.alpha, 0.0, False).to(device)

    def parameters(self, layer: nn.Module) -> List[nn.Parameter]:
        params = list(layer.factors.parameters())
        return params + ([layer.dora_scale] if layer.dora_scale is not None else [])

    def set_multiplier(self, layer: nn.Module, multiplier: float, spec: AdapterSpec) -> None:
        layer.multiplier = float(multiplier)

    def set_training(self, layer: nn.Module, mode: bool) -> None:
        layer.dropout.train(mode)

    def is_training(self, layer: nn.Module) -> bool:
        return layer.dropout.training

    def layer_delta(self, layer: nn.Module) -> torch.Tensor:
        return layer.delta()

    # ------------------------------------------------------------------ in a file
    def layer_tensors(self, layer: nn.Module, name: str, dtype: torch.dtype,
                      spec: AdapterSpec) -> Dict[str, torch.Tensor]:
        out = {f"{name}{k}": v.detach().to("cpu", dtype).contiguous() for k, v in layer.factors.tensors().items()}
        out[f"{name}{ALPHA}"] = torch.tensor(layer.alpha, dtype=torch.float32)
        if layer.dora_scale is not None:
            out[f"{name}{DORA_SCALE}"] = layer.dora_scale.detach().to("cpu", dtype).contiguous()
        return out

    def load_layer_tensors(self, layer: nn.Module, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        own = dict(layer.factors.tensors())
        if layer.dora_scale is not None:
            own[DORA_SCALE] = layer.dora_scale
        if not any(f"{name}{k}" in tensors for k in own):
            return
        for key, param in own.items():
            value = tensors.get(f"{name}{key}")
            if value is None or tuple(value.shape) != tuple(param.shape):
                got = "missing" if value is None else list(value.shape)
                raise LoraFormatError(f"{self.title} key {name}{key}: {got} does not fit the model's {list(param.shape)} "
                                      f"(another rank, conv_dim, factor or use_dora?)")
            with torch.no_grad():
                param.copy_(value.to(param.dtype))

    def read_module(self, name: str, parts: Mapping[str, torch.Tensor], source: str) -> Any:
        matrix, shape, rank, scaled = self.read_factors(name, parts, source)
        alpha = float(parts[ALPHA].float().item()) if ALPHA in parts else float(rank)
        return with_dora(MatrixModule(self.factor_suffixes[0], matrix, shape, rank, alpha, scaled), parts, name,
                         source)


def _coerce(key: str, value: Any, want: type) -> Any:
    """A network_args value as `want` (the page and kohya's --network_args give text)."""
    if want is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"config error: network_args: {key}: expected true or false, got {value!r}")
    try:
        number = want(float(value)) if want is int else want(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config error: network_args: {key}: expected a number, got {value!r}") from None
    if want is int and float(value) != number:
        raise ConfigError(f"config error: network_args: {key}: expected a whole number, got {value!r}")
    if key in ("conv_dim",) and number < 0:
        raise ConfigError(f"config error: network_args: {key}: must be 0 (no conv layers) or more, got {value!r}")
    return number


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
