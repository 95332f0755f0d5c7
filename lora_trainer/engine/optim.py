"""Optimizer and learning-rate schedule builders (plain arguments, no config object)."""
from __future__ import annotations

from typing import Dict, List

import torch

from ..errors import ConfigError


def bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken install
        return False
    return True


def build_optimizer(name: str, param_groups: List[Dict], weight_decay: float, device: torch.device):
    """AdamW (fused on CUDA, foreach elsewhere) or bitsandbytes AdamW8bit."""
    if name == "adamw8bit":
        if not bitsandbytes_available():
            raise ConfigError("config error: optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes), "
                              "or use optimizer: adamw")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(param_groups, weight_decay=weight_decay)
    if name != "adamw":
        raise ConfigError(f"config error: optimizer: unknown optimizer {name!r}")
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups, weight_decay=weight_decay, **kwargs)


def build_scheduler(name: str, optimizer, warmup_steps: int, total_steps: int, num_cycles: int = 1):
    """A diffusers learning-rate schedule stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         num_cycles=num_cycles)
