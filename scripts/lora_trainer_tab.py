"""LoRA Trainer's entry point in a WebUI: the host it runs in (lora_trainer/hosts) adds the tab, the settings
section and the API routes. Everything heavy is imported when the tab is built."""
import lora_trainer  # noqa: F401 - tiny; registers the package while the WebUI has this folder on sys.path
from lora_trainer.hosts import detect_host

detect_host().register_extension()
