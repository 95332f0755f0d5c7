"""1. Dataset: the folder, "Scan" (the dataset report), a gallery with captions, and the caption editor
(one caption, a trigger word for all, find/replace across all); every write goes back where the caption
lives (data/editor.py)."""
from pathlib import Path
from typing import Any, Dict, List

import gradio as gr

from ...data import editor
from ...errors import DatasetError
from .. import compat
from ..context import PageContext
from ..widgets import guarded
from ..scanning import gallery_items, scan_folder, source_text
from ..views import error_html, message_html, report_html
from ..widgets import field_widget


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    with gr.Column(elem_id="lora_trainer_dataset", elem_classes=["lt-section"]):
        gr.Markdown("### 1. Dataset")
        with gr.Row():
            ctx.fields["train_data_dir"] = field_widget("train_data_dir", label="Dataset folder", scale=4)
            p["scan"] = gr.Button("Scan", variant="primary", elem_id="lora_trainer_scan", scale=1)
        p["dataset_msg"] = gr.HTML(elem_id="lora_trainer_dataset_msg")
        p["report"] = gr.HTML(elem_id="lora_trainer_report")
        p["gallery"] = gr.Gallery(label="Images and captions", columns=6, height=360, object_fit="contain",
                                  allow_preview=True, elem_id="lora_trainer_gallery")
        p["gallery_rels"] = gr.State([])
        with gr.Row():
            p["image"] = gr.Dropdown(choices=[], value=None, label="Image", scale=1, elem_id="lora_trainer_image")
            p["caption"] = gr.Textbox(label="Caption", lines=2, scale=3, elem_id="lora_trainer_caption")
        with gr.Row():
            p["caption_source"] = gr.Markdown("", elem_id="lora_trainer_caption_source")
            p["save_caption"] = gr.Button("Save caption", elem_id="lora_trainer_save_caption")
        with gr.Row():
            p["bulk_trigger"] = gr.Textbox(label="Trigger word", placeholder="e.g. sks style",
                                           elem_id="lora_trainer_bulk_trigger")
            p["add_trigger"] = gr.Button("Add to every caption", elem_id="lora_trainer_add_trigger")
        with gr.Row():
            p["find"] = gr.Textbox(label="Find", elem_id="lora_trainer_find")
            p["replace"] = gr.Textbox(label="Replace with", elem_id="lora_trainer_replace")
            p["replace_all"] = gr.Button("Replace in every caption", elem_id="lora_trainer_replace_all")


def _places(raw: Dict[str, Any]) -> tuple:
    folder = str(raw.get("train_data_dir") or "").strip()
    if not folder:
        raise DatasetError("enter the dataset folder and press Scan first")
    return Path(folder), raw.get("metadata_path"), raw.get("caption_extension") or ".txt"


def scan_outputs(ctx: PageContext, values: List[Any], message: str = "", selected: Any = None) -> List[Any]:
    """[message, report, gallery, gallery rels, image picker, caption, caption source] after a scan."""
    try:
        view = scan_folder(ctx.raw(values))
    except Exception as exc:  # noqa: BLE001 - shown on the page
        return [error_html(exc), "", [], [], compat.update(choices=[], value=None), "", ""]
    items, rels = gallery_items(view)
    names = list(view.captions)
    rel = selected if selected in view.captions else (names[0] if names else None)
    shown = f" (the gallery shows the first {len(items)})" if len(items) < len(names) else ""
    text = message or f"scanned {len(names)} image(s){shown}"
    return [message_html(text, "ok"), report_html(view.report, str(view.root)), items, rels,
            compat.update(choices=names, value=rel), view.captions.get(rel, ""),
            _source_line(view.sources.get(rel, ""))]


def _source_line(source: str) -> str:
    return f"Caption: {source_text(source)}" if source else ""


def wire(ctx: PageContext) -> None:
    p = ctx.parts
    scan_out = [p["dataset_msg"], p["report"], p["gallery"], p["gallery_rels"], p["image"], p["caption"],
                p["caption_source"]]

    def on_scan(*values: Any) -> List[Any]:
        return scan_outputs(ctx, list(values))

    @guarded(3, message_at=2)
    def on_pick(*args: Any) -> List[Any]:
        values, (rel,) = ctx.split(args)
        root, csv_path, ext = _places(ctx.raw(values))
        text, source = editor.read_captions(root, csv_path, ext).get(rel, ("", ""))
        return [text, _source_line(source), ""]

    @guarded(4, message_at=3)
    def on_gallery_select(evt: gr.SelectData, *args: Any) -> List[Any]:
        values, (rels,) = ctx.split(args)
        index = compat.select_index(evt)
        if index is None or index >= len(rels):
            return [compat.no_change(), compat.no_change(), compat.no_change(), ""]
        root, csv_path, ext = _places(ctx.raw(values))
        text, source = editor.read_captions(root, csv_path, ext).get(rels[index], ("", ""))
        return [compat.update(value=rels[index]), text, _source_line(source), ""]

    @guarded(len(scan_out))
    def on_save(*args: Any) -> List[Any]:
        values, (rel, text) = ctx.split(args)
        root, csv_path, ext = _places(ctx.raw(values))
        if not rel:
            raise DatasetError("pick an image first (Scan, then choose one)")
        place = editor.save_caption(root, rel, text, csv_path, ext)
        return scan_outputs(ctx, values, f"saved the caption of {rel} to {place.describe(root)}", rel)

    @guarded(len(scan_out))
    def on_add_trigger(*args: Any) -> List[Any]:
        values, (trigger, rel) = ctx.split(args)
        return _bulk(ctx, values, rel, lambda caps: editor.with_trigger(caps, trigger), f"added {trigger.strip()!r}")

    @guarded(len(scan_out))
    def on_replace(*args: Any) -> List[Any]:
        values, (find, replace, rel) = ctx.split(args)
        return _bulk(ctx, values, rel, lambda caps: editor.replaced(caps, find, replace),
                     f"replaced {find!r} with {replace!r}")

    fields = ctx.field_inputs
    p["scan"].click(on_scan, fields, scan_out)
    p["image"].input(on_pick, fields + [p["image"]], [p["caption"], p["caption_source"], p["dataset_msg"]])
    p["gallery"].select(on_gallery_select, fields + [p["gallery_rels"]],
                        [p["image"], p["caption"], p["caption_source"], p["dataset_msg"]])
    p["save_caption"].click(on_save, fields + [p["image"], p["caption"]], scan_out)
    p["add_trigger"].click(on_add_trigger, fields + [p["bulk_trigger"], p["image"]], scan_out)
    p["replace_all"].click(on_replace, fields + [p["find"], p["replace"], p["image"]], scan_out)


def _bulk(ctx: PageContext, values: List[Any], rel: Any, change, what: str) -> List[Any]:
    """Apply a change to every caption, write the changed ones, scan again."""
    root, csv_path, ext = _places(ctx.raw(values))
    current = {name: text for name, (text, _source) in editor.read_captions(root, csv_path, ext).items()}
    changed = change(current)
    editor.save_captions(root, changed, csv_path, ext)
    return scan_outputs(ctx, values, f"{what}: {len(changed)} caption(s) changed", rel)
