"""6. Results, Grid: rows = LoRAs (the picked LoRA with its run's checkpoints, or the LoRAs chosen),
columns = weights, every cell the same prompt and seed. The service renders it (standalone: the run's
base model; in the WebUI: its txt2img) and saves the PNG; the page shows it."""
from typing import Any, List

import gradio as gr
from PIL import Image

from ...grid import parse_weights
from ..context import PageContext
from ..widgets import guarded
from ..result_views import grid_html, grid_rows, grid_settings
from .result_list import listed


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    rows_info = ("Empty: the picked LoRA." if ctx.service.in_webui else
                 "Empty: the picked LoRA and its run's checkpoints (one row each, in step order).")
    with gr.Accordion("Grid: LoRAs x weights", open=False, elem_id="lora_trainer_grid_box"):
        p["grid_loras"] = gr.Dropdown(choices=[], value=[], multiselect=True, label="Rows: LoRAs", info=rows_info,
                                      elem_id="lora_trainer_grid_loras")
        with gr.Row():
            p["grid_prompt"] = gr.Textbox(label="Prompt", placeholder="e.g. sks, a photo of a dog", scale=3,
                                          lines=1, max_lines=1, elem_id="lora_trainer_grid_prompt")
            p["grid_negative"] = gr.Textbox(label="Negative prompt", scale=2, lines=1, max_lines=1,
                                            elem_id="lora_trainer_grid_negative")
        with gr.Row():
            p["grid_weights"] = gr.Textbox(value="0.4,0.6,0.8,1.0", label="Columns: weights", lines=1, max_lines=1,
                                           elem_id="lora_trainer_grid_weights")
            p["grid_seed"] = gr.Number(value=0, precision=0, label="Seed", elem_id="lora_trainer_grid_seed")
            p["grid_size"] = gr.Number(value=512, precision=0, label="Size (px)", elem_id="lora_trainer_grid_size")
            p["grid_steps"] = gr.Number(value=20, precision=0, label="Steps", elem_id="lora_trainer_grid_steps")
            p["grid_cfg"] = gr.Number(value=7.0, label="CFG scale", elem_id="lora_trainer_grid_cfg")
        p["grid_run"] = gr.Button("Render grid", variant="primary", elem_id="lora_trainer_grid_run")
        p["grid_msg"] = gr.HTML(elem_id="lora_trainer_grid_msg")
        p["grid_image"] = gr.Image(label="Grid", interactive=False, elem_id="lora_trainer_grid_image")


def load_png(path) -> Image.Image:
    with Image.open(path) as img:
        return img.copy()


def wire(ctx: PageContext) -> None:
    p = ctx.parts

    @guarded(2)
    def on_grid(picked: Any, chosen: Any, prompt: Any, negative: Any, weights: Any, seed: Any, size: Any,
                steps: Any, cfg: Any) -> List[Any]:
        columns = parse_weights(str(weights or ""))
        settings = grid_settings(seed, size, steps, cfg)
        rows = grid_rows(ctx.service, listed(ctx), picked, list(chosen or []))
        path = ctx.service.grid(rows, str(prompt or ""), columns, negative=str(negative or ""), **settings)
        return [grid_html(path, len(rows), len(columns)), load_png(path)]

    inputs = [p["result_pick"], p["grid_loras"], p["grid_prompt"], p["grid_negative"], p["grid_weights"],
              p["grid_seed"], p["grid_size"], p["grid_steps"], p["grid_cfg"]]
    p["grid_run"].click(on_grid, inputs, [p["grid_msg"], p["grid_image"]])
