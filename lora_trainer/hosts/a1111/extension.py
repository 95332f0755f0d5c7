"""The extension inside the WebUI: the LoRA Trainer tab, its section in Settings and its HTTP routes,
registered through `modules.script_callbacks`. A missing dependency turns into a message on the tab."""
from __future__ import annotations

from typing import Any, Optional

from .settings import register_settings


def describe_missing(exc: BaseException) -> str:
    """One line telling the user what to install when the trainer cannot start."""
    name = getattr(exc, "name", None) or ""
    if isinstance(exc, ImportError) and name.split(".")[0] in ("diffusers", "peft", "transformers", "accelerate"):
        return (f"LoRA Trainer needs {name.split('.')[0]}: restart the WebUI so that the extension's install.py "
                f"runs, or run in the WebUI's venv: pip install diffusers==0.31.0 peft==0.13.2")
    return f"LoRA Trainer cannot start: {type(exc).__name__}: {exc}"


class Extension:
    """The WebUI callbacks of one host; the page's service is made on first use."""

    def __init__(self, host: Any):
        self.host = host
        self._service: Optional[Any] = None

    def service(self) -> Any:
        if self._service is None:
            from ...service import HostedService

            self._service = HostedService(self.host)
        return self._service

    def on_ui_tabs(self):
        import gradio as gr

        try:
            from ...ui import build_ui

            blocks = build_ui(self.service())
        except Exception as exc:  # noqa: BLE001 - the tab must appear and say what is wrong
            with gr.Blocks(analytics_enabled=False) as blocks:
                gr.Markdown(describe_missing(exc), elem_id="lora_trainer_error")
        return [(blocks, "LoRA Trainer", "lora_trainer")]

    def on_ui_settings(self) -> None:
        try:
            register_settings()
        except Exception as exc:  # noqa: BLE001 - the WebUI starts without our settings
            print(f"[LoRA Trainer] settings unavailable: {exc}")

    def on_app_started(self, _demo, app) -> None:
        try:
            from .api import register_routes

            register_routes(app, self.service(), self.host)
        except Exception as exc:  # noqa: BLE001 - the WebUI starts without our routes
            print(f"[LoRA Trainer] API routes unavailable: {exc}")
        try:  # jobs a restart interrupted are marked so; queued ones run again
            self.service().job_queue().start()
        except Exception as exc:  # noqa: BLE001 - the WebUI starts without the queue
            print(f"[LoRA Trainer] job queue unavailable: {exc}")


def register(host: Any) -> Extension:
    """Register the tab, the settings section and the routes with the WebUI's script callbacks."""
    from modules import script_callbacks

    extension = Extension(host)
    script_callbacks.on_ui_tabs(extension.on_ui_tabs)
    script_callbacks.on_ui_settings(extension.on_ui_settings)
    script_callbacks.on_app_started(extension.on_app_started)
    return extension
