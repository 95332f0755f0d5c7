"""LoRA tools: bake LoRAs into a checkpoint.

Each function writes one file atomically and returns a result object with the numbers (for the CLI
and the UI): `merge_loras` -> MergeResult.
"""
from __future__ import annotations

from .files import LoraSource, parse_lora_arg
from .merge import MergedLora, MergeResult, merge_loras

__all__ = ["LoraSource", "MergeResult", "MergedLora", "merge_loras", "parse_lora_arg"]
