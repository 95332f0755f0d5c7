"""3. Model: inside the WebUI, the loaded checkpoint (training uses it); standalone, a base model path."""
from typing import Any

import gradio as gr

from ..context import PageContext
from ..widgets import guarded
from ..widgets import field_widget


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    with gr.Column(elem_id="lora_trainer_model", elem_classes=["lt-section"]):
        gr.Markdown("### 3. Model")
        if ctx.service.needs_base_model_path():
            ctx.fields["base_model"] = field_widget("base_model", label="Base model (file or diffusers folder)")
            return
        with gr.Row():
            p["model_info"] = gr.Markdown(ctx.service.model_description(), elem_id="lora_trainer_model_info")
            p["model_refresh"] = gr.Button("Refresh", elem_id="lora_trainer_model_refresh", scale=0)


def wire(ctx: PageContext) -> None:
    p = ctx.parts
    if "model_refresh" not in p:
        return

    @guarded(1)
    def refresh(*_args: Any) -> str:
        return ctx.service.model_description()

    p["model_refresh"].click(refresh, None, [p["model_info"]])
