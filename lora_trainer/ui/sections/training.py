"""4. Training: presets, the main settings, every other config key in "Advanced" (each with its tip),
Save / Load config as the YAML the CLI reads, and the CLI command for a saved config."""
from typing import Any, List

import gradio as gr

from .. import compat
from ...config import dump_config
from ..forms import MAIN_KEYS, advanced_groups, cli_command, load_config_values, save_config_file, to_form
from ..context import PageContext
from ..widgets import guarded
from ..presets import preset_names, preset_values
from ..views import message_html
from ..widgets import field_widget

ROW = 4  # widgets per row


def _rows(ctx: PageContext, names: List[str]) -> None:
    for start in range(0, len(names), ROW):
        with gr.Row():
            for name in names[start:start + ROW]:
                ctx.fields[name] = field_widget(name)


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    with gr.Column(elem_id="lora_trainer_training", elem_classes=["lt-section"]):
        gr.Markdown("### 4. Training")
        p["preset"] = gr.Dropdown(choices=preset_names(), value=None, label="Preset",
                                  info="Fills rank, alpha, learning rate, epochs and resolution.",
                                  elem_id="lora_trainer_preset")
        _rows(ctx, list(MAIN_KEYS))
        with gr.Accordion("Advanced: every setting", open=False, elem_id="lora_trainer_advanced"):
            gr.Markdown("Out of memory? Lower batch_size or lora_rank, turn on gradient_checkpointing, or lower "
                        "the resolution. Empty boxes use the default.")
            for title, names in advanced_groups():
                gr.Markdown(f"**{title}**")
                _rows(ctx, names)
        with gr.Row():
            p["config_path"] = gr.Textbox(label="Config file (YAML)", scale=4, elem_id="lora_trainer_config_path",
                                          placeholder="empty: <output_dir>/train_config.yaml")
            p["save_config"] = gr.Button("Save config", elem_id="lora_trainer_save_config", scale=1)
            p["load_config"] = gr.Button("Load config", elem_id="lora_trainer_load_config", scale=1)
        p["config_msg"] = gr.HTML(elem_id="lora_trainer_config_msg")
        p["cli"] = gr.Textbox(label="Copy CLI command", value=cli_command(None), interactive=False, lines=1,
                              elem_id="lora_trainer_cli", **compat.copy_button_kwargs())
        p["yaml"] = gr.Textbox(label="Saved config", lines=8, max_lines=30, interactive=False,
                               elem_id="lora_trainer_yaml")


def wire(ctx: PageContext) -> None:
    p = ctx.parts
    names = ctx.field_names
    preset_keys = [k for k in preset_values(preset_names()[0]) if k in ctx.fields]

    @guarded(len(preset_keys) + 1, message_at=len(preset_keys))
    def on_preset(name: Any) -> List[Any]:
        if not name:
            return [compat.no_change() for _ in preset_keys] + [""]
        values = preset_values(name)
        return [to_form(k, values[k]) for k in preset_keys] + [message_html(f"preset {name!r} applied", "ok")]

    @guarded(4)
    def on_save(*args: Any) -> List[Any]:
        values, (path,) = ctx.split(args)
        target, text = save_config_file(ctx.service, names, values, path)
        return [message_html(f"saved {target}", "ok"), str(target), cli_command(target), text]

    @guarded(len(names) + 4)
    def on_load(path: str) -> List[Any]:
        target, config, values = load_config_values(path, names)
        return [message_html(f"loaded {target}", "ok"), str(target), cli_command(target), dump_config(config),
                *values]

    p["preset"].change(on_preset, [p["preset"]], [ctx.fields[k] for k in preset_keys] + [p["config_msg"]])
    p["save_config"].click(on_save, ctx.field_inputs + [p["config_path"]],
                           [p["config_msg"], p["config_path"], p["cli"], p["yaml"]])
    p["load_config"].click(on_load, [p["config_path"]],
                           [p["config_msg"], p["config_path"], p["cli"], p["yaml"], *ctx.field_inputs])
