"""Forge Neo as a host: its loaded SD1.5 / SDXL model trained in place (bundle.py, sdxl_bundle.py, with
out-of-place block forwards from blocks.py and models/frozen_layers for its inference-tensor weights), its
GPU queue and main thread (host.py), its LoRA extension and loader (lora_loader.py). Everything else (tab,
settings, routes, progress, samples) is the A1111 host's, which Forge keeps compatible.

Only these files touch Forge (`modules.*`, `backend.*`, `modules_forge`), inside functions.
"""
from .host import ForgeNeoHost

__all__ = ["ForgeNeoHost"]
