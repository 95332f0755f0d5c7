"""Files on disk: kohya LoRA safetensors with metadata, the WebUI's sidecars."""
