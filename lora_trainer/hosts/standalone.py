"""The standalone host: a plain Python process (`python -m lora_trainer ...`, the trainer's own page).

It trains a base model given by path, runs jobs directly, and has no LoRA list of its own: every
answer of `Host`'s defaults holds; runs go to `output_root/<name>`.
"""
from __future__ import annotations

from pathlib import Path

from .base import Host


class StandaloneHost(Host):
    """No program around the trainer; always detected (it is the last in the registry)."""

    name = "standalone"
    title = "LoRA Trainer (standalone)"
    in_webui = False

    def __init__(self, output_root: str = "output"):
        self.output_root = Path(output_root)

    def detect(self) -> bool:
        return True

    def workspace(self) -> Path:
        return self.output_root.resolve()
