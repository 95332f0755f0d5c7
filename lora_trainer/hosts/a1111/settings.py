"""The trainer's section in the WebUI's Settings page: its options and their defaults."""
from __future__ import annotations

from typing import Dict

SECTION = ("lora_trainer", "LoRA Trainer")
# key: (default, label[, slider range])
SETTINGS: Dict[str, tuple] = {
    "lora_trainer_workspace": ("", "Folder for training runs (checkpoints, logs, samples); empty: outputs/lora_trainer"),
    "lora_trainer_copy_to_addnet": (False, "Also copy new LoRAs into sd-webui-additional-networks' models/lora folder"),
    "lora_trainer_preferred_weight": (0.8, "Preferred weight written into new LoRAs' cards",
                                      {"minimum": 0.0, "maximum": 2.0, "step": 0.05}),
    "lora_trainer_offload": (False, "Move the VAE (and a frozen text encoder) to the CPU while training"),
    "lora_trainer_overwrite": (False, "Overwrite a LoRA of the same name (off: add -1, -2 ...)"),
    "lora_trainer_any_output_dir": (False, "Let the page and the API write a run to any folder of this machine "
                                           "(off: only inside the folder for training runs)"),
}


def register_settings() -> None:
    """Add the trainer's section to the WebUI's Settings."""
    from modules import shared

    import gradio as gr

    for key, (default, label, *slider) in SETTINGS.items():
        if slider:
            info = shared.OptionInfo(default, label, gr.Slider, slider[0], section=SECTION)
        else:
            info = shared.OptionInfo(default, label, section=SECTION)
        shared.opts.add_option(key, info)
