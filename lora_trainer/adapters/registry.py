"""The adapter kinds a build knows, by name, and what is read through them: the config's `network_type`,
the modules of a file, and the spec of a network from a config or a file.

Kinds are registered as `"module:Class"` and imported on first use, so that the config (and the page,
the CLI's start) can check a `network_type` without importing torch.
"""
from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ConfigError, LoraFormatError
from .base import AdapterKind, AdapterSpec, FileModule

if TYPE_CHECKING:
    import torch

# Kinds users ask for by name that this build cannot train yet, and what they are.
NOT_YET = {"dora": "DoRA: set use_dora: true in network_args of locon, loha or lokr", "lycoris": "LyCORIS",
           "ia3": "IA3", "oft": "OFT", "glora": "GLoRA", "full": "a full weight difference"}
# Key fragments of formats no registered kind reads, and what they are (for the message that refuses them).
OTHER_FORMATS = (("hada_t", "LoHa with a Tucker core (hada_t1/t2)"), ("lokr_t2", "LoKr with a Tucker core"),
                 ("lokr_w1_", "LoKr with a low-rank w1"), ("lora_mid", "LoCon with a Tucker/CP core (lora_mid)"),
                 ("lora_A", "peft/diffusers"), (".lora.down.", "diffusers"),
                 (".diff", "a full weight difference (LyCORIS full)"))
# Keys every kind's module may have beside its own (they belong to whichever kind the module's other keys say).
SHARED_SUFFIXES = (".alpha", ".dora_scale")


class AdapterRegistry:
    """Adapter kinds by `network_type` name, in the order file keys are offered to them."""

    def __init__(self, kinds: Mapping[str, str]):
        self._paths = dict(kinds)
        self._loaded: Dict[str, AdapterKind] = {}

    def names(self) -> List[str]:
        return list(self._paths)

    def get(self, name: str) -> AdapterKind:
        """The kind called `name` (imported on first use); ConfigError for an unknown or unsupported name."""
        self.check_name(name)
        if name not in self._loaded:
            module, _, attr = self._paths[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)()
        return self._loaded[name]

    def kinds(self) -> List[AdapterKind]:
        return [self.get(name) for name in self._paths]

    def check_name(self, name: str) -> None:
        """Refuse a `network_type` that is not registered, saying whether it is planned or a typo."""
        if name in self._paths:
            return
        known = ", ".join(self._paths)
        if str(name).lower() in NOT_YET:
            raise ConfigError(f"config error: network_type: {name!r} ({NOT_YET[str(name).lower()]}) is not supported "
                              f"yet; this version trains: {known}")
        close = difflib.get_close_matches(str(name), list(self._paths), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config error: network_type: {name!r} is not one of {known}{hint}")

    # ------------------------------------------------------------------ files
    def split_key(self, key: str) -> Optional[Tuple[AdapterKind, str, str]]:
        """(kind, module name, suffix) of a file key that a registered kind reads, else None."""
        for kind in self.kinds():
            for suffix in kind.suffixes:
                if suffix not in SHARED_SUFFIXES and key.endswith(suffix):
                    return kind, key[: -len(suffix)], suffix
        return None

    def group(self, tensors: Mapping[str, "torch.Tensor"], source: str,
              strict: bool = True) -> Dict[str, Tuple[AdapterKind, Dict[str, "torch.Tensor"]]]:
        """{module name: (kind, {suffix: tensor})}; with `strict`, a key no kind reads is refused by name."""
        out: Dict[str, Tuple[AdapterKind, Dict[str, Any]]] = {}
        shared = {}
        for key in sorted(tensors):
            suffix = next((s for s in SHARED_SUFFIXES if key.endswith(s)), None)
            if suffix:
                shared[key] = (key[: -len(suffix)], suffix)
                continue
            found = self.split_key(key)
            if found is None:
                if strict:
                    raise LoraFormatError(self._unreadable(key, source))
                continue
            kind, name, suffix = found
            if name in out and out[name][0] is not kind:
                raise LoraFormatError(f"{source}: module {name} has keys of both {out[name][0].title} and "
                                      f"{kind.title}; the file is damaged")
            out.setdefault(name, (kind, {}))[1][suffix] = tensors[key]
        for key, (name, suffix) in shared.items():
            if name in out:
                out[name][1][suffix] = tensors[key]
            elif strict:
                raise LoraFormatError(f"{source}: key {key!r} belongs to no module (no other key of {name}); "
                                      f"the file is incomplete")
        return out

    def read_modules(self, tensors: Mapping[str, "torch.Tensor"], source: str) -> Dict[str, FileModule]:
        """Every module of a file, read by its kind; refuses keys and shapes that no kind reads."""
        return {name: kind.read_module(name, parts, source)
                for name, (kind, parts) in sorted(self.group(tensors, source).items())}

    def module_names(self, tensors: Mapping[str, "torch.Tensor"]) -> List[str]:
        """The names of the modules a file has (keys no kind reads are left out)."""
        return sorted(self.group(tensors, "", strict=False))

    def file_spec(self, tensors: Mapping[str, "torch.Tensor"], source: str, dropout: float = 0.0,
                  metadata: Optional[Mapping[str, str]] = None) -> AdapterSpec:
        """The spec of the network a file was saved from: its kind (from the keys, or LyCORIS's `algo` in
        `ss_network_args`), rank and alpha, and the kind's arguments from `ss_network_args`."""
        groups = self.group(tensors, source, strict=False)
        if not groups:
            raise LoraFormatError(f"{source}: no module of a kind this version reads ({self.describe_keys()})")
        kind = groups[sorted(groups)[0]][0]
        modules = {name: k.read_module(name, parts, source) for name, (k, parts) in groups.items() if k is kind}
        spec = kind.spec_from_modules(modules, dropout)
        args = _file_args(metadata or {})
        algo = args.pop("algo", None)
        if algo in self._paths and algo != spec.kind.name and algo != "lora":
            spec = AdapterSpec(self.get(algo), spec.rank, spec.alpha, dropout, spec.args)
        if spec.kind.name == "lora":
            return spec
        rank, alpha = spec.rank, spec.alpha
        if metadata and str(metadata.get("ss_network_dim", "")).isdigit():  # LoKr's full w2 has no rank of its own
            rank = int(metadata["ss_network_dim"])
            alpha = float(metadata.get("ss_network_alpha") or rank)
        return AdapterSpec(spec.kind, rank, alpha, dropout,
                           spec.kind.check_args({**spec.args, **{k: v for k, v in args.items() if k not in spec.args}}))

    def describe_keys(self) -> str:
        return "; ".join(f"{k.title}: " + ", ".join(f"*{s}" for s in k.suffixes) for k in self.kinds())

    def _unreadable(self, key: str, source: str) -> str:
        what = next((what for fragment, what in OTHER_FORMATS if fragment in key), "an unknown kind")
        return (f"{source}: key {key!r} is {what}; only keys of {', '.join(k.title for k in self.kinds())} "
                f"({self.describe_keys()}) can be used here")

    # ------------------------------------------------------------------ configs
    def spec_for(self, config: Any) -> AdapterSpec:
        """The network a config asks for: network_type, lora_rank, lora_alpha, lora_dropout, network_args."""
        kind = self.get(config.network_type)
        return AdapterSpec(kind, config.lora_rank, config.effective_alpha, config.lora_dropout,
                           kind.check_args(config.network_args))


def _file_args(metadata: Mapping[str, str]) -> Dict[str, Any]:
    """LyCORIS's `ss_network_args` of a file as the kinds' network_args (`dora_wd` -> use_dora)."""
    import json

    try:
        raw = json.loads(metadata.get("ss_network_args") or "{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out = {k: raw[k] for k in ("algo", "conv_dim", "conv_alpha", "factor") if k in raw}
    if "dora_wd" in raw:
        out["use_dora"] = raw["dora_wd"]
    return out
