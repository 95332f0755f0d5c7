"""2. Captions: one button per auto-captioning backend that can run here (TrainerService.captioners);
each captions the dataset folder in place and scans it again."""
from typing import Any, List

import gradio as gr

from ..context import PageContext
from ..widgets import guarded
from ..views import message_html
from .dataset import scan_outputs

NOT_INSTALLED = ("Auto-captioning is not installed here (the `lora_trainer.caption` package is missing). "
                 "Write captions in the editor above, in `metadata.csv` or in `.txt` files beside the images.")


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    names = ctx.service.captioners()
    p["captioner_names"] = names
    with gr.Column(elem_id="lora_trainer_captions", elem_classes=["lt-section"]):
        gr.Markdown("### 2. Captions")
        if not names:
            gr.Markdown(NOT_INSTALLED, elem_id="lora_trainer_captions_missing")
            return
        with gr.Row():
            p["caption_prefix"] = gr.Textbox(label="Put in front of every new caption", placeholder="e.g. sks style, ",
                                             elem_id="lora_trainer_caption_prefix")
            p["caption_model"] = gr.Textbox(label="Model (folder or hub id; empty: the backend's default)",
                                            elem_id="lora_trainer_caption_model")
            p["caption_overwrite"] = gr.Checkbox(label="Replace existing captions", value=False,
                                                 elem_id="lora_trainer_caption_overwrite")
        with gr.Row():
            for name in names:
                p[f"caption_with_{name}"] = gr.Button(f"Caption with {name}",
                                                      elem_id=f"lora_trainer_caption_{_slug(name)}")
        p["caption_msg"] = gr.HTML(elem_id="lora_trainer_caption_msg")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def wire(ctx: PageContext) -> None:
    p = ctx.parts
    if not p["captioner_names"]:
        return
    scan_out = [p["dataset_msg"], p["report"], p["gallery"], p["gallery_rels"], p["image"], p["caption"],
                p["caption_source"]]
    extras = [p["caption_prefix"], p["caption_model"], p["caption_overwrite"], p["image"]]
    for name in p["captioner_names"]:
        p[f"caption_with_{name}"].click(_runner(ctx, name), ctx.field_inputs + extras, [p["caption_msg"], *scan_out])


def _runner(ctx: PageContext, name: str):
    @guarded(8)
    def run(*args: Any) -> List[Any]:
        values, (prefix, model, overwrite, rel) = ctx.split(args)
        folder = str(ctx.raw(values).get("train_data_dir") or "").strip()
        summary = ctx.service.run_captioner(folder, name, prefix or "", bool(overwrite), None, model=model or None)
        return [message_html(summary, "ok"), *scan_outputs(ctx, values, selected=rel)]

    return run
