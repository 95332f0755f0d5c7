"""LoRA Trainer: turn a folder of images into a kohya-format LoRA (CLI, WebUI extension, web page)."""
__version__ = "0.1.0"
