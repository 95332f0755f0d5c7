"""Starting points for the Training section. A preset fills the keys that matter most for the kind of
LoRA; everything else keeps its value. `max_steps` is cleared so that the preset's epochs count."""
from __future__ import annotations

from typing import Any, Dict, List

PRESETS: Dict[str, Dict[str, Any]] = {
    # Does everything run? Few steps, small rank, a high learning rate to see the effect at all.
    "quick test": {"lora_rank": 4, "lora_alpha": 4, "learning_rate": 1e-4, "epochs": 1, "resolution": 512,
                   "max_steps": None},
    # An art style: a moderate rank, alpha at half the rank, many passes over a varied set.
    "style": {"lora_rank": 16, "lora_alpha": 8, "learning_rate": 1e-4, "epochs": 10, "resolution": 512,
              "max_steps": None},
    # A character or object: more capacity for identity detail, a few more passes.
    "character": {"lora_rank": 32, "lora_alpha": 16, "learning_rate": 1e-4, "epochs": 15, "resolution": 512,
                  "max_steps": None},
}


def preset_names() -> List[str]:
    return list(PRESETS)


def preset_values(name: str) -> Dict[str, Any]:
    """The config values of preset `name` (KeyError naming the presets when unknown)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
