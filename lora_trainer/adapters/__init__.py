"""Adapter kinds: how a layer of the model is adapted, trained and stored (base.py says the verbs).

`network_type` in the config names one. LoRA is the kind this version trains; LoCon, LoHa, LoKr and DoRA
come next. A new kind is one file with an `AdapterKind` subclass plus one line in
`default_adapter_kinds()` below.
"""
from __future__ import annotations

from .base import AdapterKind, AdapterSpec, FileModule
from .registry import AdapterRegistry


def default_adapter_kinds() -> AdapterRegistry:
    """Every adapter kind this build trains, by `network_type`; file keys are offered to them in this order."""
    return AdapterRegistry({
        "lora": "lora_trainer.adapters.lora:LoraKind",
    })


def make_spec(rank: int, alpha: float, network_type: str = "lora", dropout: float = 0.0) -> AdapterSpec:
    """A spec without a config (tests, benchmarks): `network_type` with this rank, alpha and dropout."""
    return AdapterSpec(default_adapter_kinds().get(network_type), rank, alpha, dropout)


__all__ = ["AdapterKind", "AdapterRegistry", "AdapterSpec", "FileModule", "default_adapter_kinds", "make_spec"]
