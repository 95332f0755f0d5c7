"""LoRA tools: bake LoRAs into a checkpoint, combine LoRAs into one, re-rank a LoRA.

Each function writes one file atomically and returns a result object with the numbers (for the CLI
and the UI): `merge_loras` -> MergeResult, `combine_loras` -> CombineResult, `resize_lora` -> ResizeResult.
"""
from __future__ import annotations

from .combine import CombineResult, ModuleCombine, combine_loras
from .files import LoraSource, parse_lora_arg
from .merge import MergedLora, MergeResult, merge_loras
from .resize import ModuleResize, ResizeResult, resize_beside, resize_lora, resized_path

__all__ = ["CombineResult", "LoraSource", "MergeResult", "MergedLora", "ModuleCombine", "ModuleResize",
           "ResizeResult", "combine_loras", "merge_loras", "parse_lora_arg", "resize_beside", "resize_lora",
           "resized_path"]
