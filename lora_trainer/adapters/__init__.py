"""Adapter kinds: how a layer of the model is adapted, trained and stored (base.py says the verbs).

`network_type` in the config names one: LoRA (kohya's networks.lora), and the LyCORIS kinds LoCon, LoHa and
LoKr (lycoris.py says what they share; DoRA is their `use_dora` option, dora.py). A new kind is one file
with an `AdapterKind` subclass plus one line in `default_adapter_kinds()` below.
"""
from __future__ import annotations

from .base import AdapterKind, AdapterSpec, FileModule
from .registry import AdapterRegistry


def default_adapter_kinds() -> AdapterRegistry:
    """Every adapter kind this build trains, by `network_type`; file keys are offered to them in this order."""
    return AdapterRegistry({
        "lora": "lora_trainer.adapters.lora:LoraKind",
        "locon": "lora_trainer.adapters.locon:LoconKind",
        "loha": "lora_trainer.adapters.loha:LohaKind",
        "lokr": "lora_trainer.adapters.lokr:LokrKind",
    })


def make_spec(rank: int, alpha: float, network_type: str = "lora", dropout: float = 0.0,
              args: "dict | None" = None) -> AdapterSpec:
    """A spec without a config (tests, benchmarks): `network_type` with this rank, alpha, dropout and args."""
    kind = default_adapter_kinds().get(network_type)
    return AdapterSpec(kind, rank, alpha, dropout, kind.check_args(args or {}))


__all__ = ["AdapterKind", "AdapterRegistry", "AdapterSpec", "FileModule", "default_adapter_kinds", "make_spec"]
