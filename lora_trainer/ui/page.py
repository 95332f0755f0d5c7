"""`build_ui(service)`: the trainer's page, one gradio Blocks for the WebUI tab and the standalone app.

The page is seven sections: six in the order of the work (Dataset, Captions, Model, Training, Run, Results),
then the Prompt assistant (a text-model LoRA on the user's own prompts, lora_trainer/text).
Each section module has `layout(ctx)` (creates its components) and `wire(ctx)` (connects events); all
layouts run first so that any event can use any section's components. The callbacks stay thin: the work
is in plain functions (forms, scanning, views, charts, data.editor) and in the service (lora_trainer/service.py).
"""
from __future__ import annotations

from typing import Optional

import gradio as gr

from ..service import TrainerService
from . import compat
from .context import ROOT_ID, PageContext
from .sections import captions, dataset, model, prompt_assistant, queue, results, run, training


def build_ui(service: TrainerService, css: Optional[str] = None, js: Optional[str] = None) -> gr.Blocks:
    """The trainer's page. `css` is applied where gr.Blocks takes it (standalone passes the rest to
    launch); `js` (standalone only) is run on page load. Inside the WebUI neither is needed: the WebUI
    loads the extension's style.css and javascript/ itself."""
    modules = (dataset, captions, model, training, run, queue, results, prompt_assistant)
    ctx = PageContext(service)
    demo = compat.blocks("LoRA Trainer", css)
    with demo:
        with gr.Column(elem_id=ROOT_ID):
            for module in modules:
                module.layout(ctx)
        for module in modules:
            module.wire(ctx)
        if js:
            compat.on_load_js(demo, js)
    return demo
