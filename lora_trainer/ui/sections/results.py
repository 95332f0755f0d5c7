"""6. Results: the trained LoRAs with their metadata, previews and sizes; the `<lora:...>` text to use;
inside the WebUI a "Send to txt2img" button, standalone the file path. Below them the Grid
(result_grid.py) and the tools for the picked LoRA: Resize, Merge into checkpoint (result_tools.py)."""
from typing import Any, List

import gradio as gr

from .. import compat
from ..context import PageContext
from ..widgets import guarded
from ..views import find_result, results_html
from . import result_grid, result_tools
from .result_list import listed, result_targets, results_outputs

JS_SEND = "loraTrainerSendToTxt2img"  # defined in javascript/lora_trainer.js


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    with gr.Column(elem_id="lora_trainer_results_section", elem_classes=["lt-section"]):
        gr.Markdown("### 6. Results")
        p["results_refresh"] = gr.Button("Refresh", elem_id="lora_trainer_results_refresh")
        p["results"] = gr.HTML(results_html([]), elem_id="lora_trainer_results")
        with gr.Row():
            p["result_pick"] = gr.Dropdown(choices=[], value=None, label="LoRA", elem_id="lora_trainer_result_pick")
            p["weight"] = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Weight", elem_id="lora_trainer_weight",
                                    info="In the prompt text, and the weight Merge bakes in.")
        with gr.Row():
            p["prompt"] = gr.Textbox(label="Prompt text", interactive=False, elem_id="lora_trainer_prompt",
                                     **compat.copy_button_kwargs())
            if ctx.service.in_webui:
                p["send"] = gr.Button("Send to txt2img", variant="primary", elem_id="lora_trainer_send")
            else:
                p["result_path"] = gr.Textbox(label="File", interactive=False, elem_id="lora_trainer_result_path",
                                              **compat.copy_button_kwargs())
        p["previews"] = gr.Gallery(label="Previews", columns=6, height=200, object_fit="contain",
                                   elem_id="lora_trainer_previews")
        result_grid.layout(ctx)
        result_tools.layout(ctx)


def wire(ctx: PageContext) -> None:
    p = ctx.parts
    detail = [p["prompt"]] + ([p["result_path"]] if "result_path" in p else [])
    targets = result_targets(ctx)

    @guarded(len(targets))
    def on_refresh(picked: Any) -> List[Any]:
        return results_outputs(ctx, keep=picked)

    @guarded(len(detail))
    def on_pick(label: Any, weight: Any) -> Any:
        item = find_result(listed(ctx), label)
        text = path = ""
        if item is not None:
            text = ctx.service.prompt_text(str(item["name"]), float(weight or 0), str(item.get("trigger") or ""))
            path = str(item["path"])
        return [text, path] if len(detail) > 1 else text

    p["results_refresh"].click(on_refresh, [p["result_pick"]], targets)
    p["result_pick"].change(on_pick, [p["result_pick"], p["weight"]], detail)
    p["weight"].change(on_pick, [p["result_pick"], p["weight"]], detail)
    if "send" in p:
        p["send"].click(None, [p["prompt"]], None, **compat.js_kwargs(JS_SEND))
    result_grid.wire(ctx)
    result_tools.wire(ctx)
