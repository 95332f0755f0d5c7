"""LoRA Trainer's WebUI glue: the tab, the settings section and the API routes. Everything heavy is
imported when the tab is built, and a missing dependency turns into a message on the tab."""
import gradio as gr

import lora_trainer  # noqa: F401 - tiny; registers the package while the WebUI has this folder on sys.path
from modules import script_callbacks

_backend = None  # the one WebUIBackend of this WebUI process (created on first use)


def backend():
    global _backend
    if _backend is None:
        from lora_trainer.hosts.a1111.host import WebUIBackend

        _backend = WebUIBackend()
    return _backend


def on_ui_tabs():
    try:
        from lora_trainer.ui import build_ui

        blocks = build_ui(backend())
    except Exception as exc:  # noqa: BLE001 - the tab must appear and say what is wrong
        with gr.Blocks(analytics_enabled=False) as blocks:
            try:
                from lora_trainer.hosts.a1111.host import describe_missing

                text = describe_missing(exc)
            except Exception:  # noqa: BLE001
                text = f"LoRA Trainer cannot start: {exc}. Restart the WebUI so its install.py runs."
            gr.Markdown(text, elem_id="lora_trainer_error")
    return [(blocks, "LoRA Trainer", "lora_trainer")]


def on_ui_settings():
    try:
        from lora_trainer.hosts.a1111.host import register_settings

        register_settings()
    except Exception as exc:  # noqa: BLE001
        print(f"[LoRA Trainer] settings unavailable: {exc}")


def on_app_started(_demo, app):
    try:
        from lora_trainer.hosts.a1111.api import register_routes

        register_routes(app, backend())
    except Exception as exc:  # noqa: BLE001
        print(f"[LoRA Trainer] API routes unavailable: {exc}")


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
