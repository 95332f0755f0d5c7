"""Inside the AUTOMATIC1111 WebUI: progress through `shared.state`, the GPU queue, the Lora folder.

Everything that touches the WebUI's `modules.*` lives in this package (imported lazily, inside
functions) and in `scripts/lora_trainer_tab.py`; the rest of the trainer never imports the WebUI.
"""
