"""The AUTOMATIC1111 WebUI as a host: the model it has loaded trained in place (bundle.py, sdxl_bundle.py,
layouts.py), its GPU queue, progress and Interrupt (host.py, progress.py, state.py), its Lora folder and
built-in Lora extension (lora_extension.py), txt2img samples and grids (sampling.py), its interrogators
as captioners (captioners.py), the tab, settings and HTTP routes (extension.py, api.py).

Everything that touches the WebUI's `modules.*` lives in this package, imported inside functions so
that every file here imports outside the WebUI too; the rest of the trainer never imports the WebUI.
"""
