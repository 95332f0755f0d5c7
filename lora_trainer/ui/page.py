"""`build_ui(backend)`: the trainer's page, one gradio Blocks for the WebUI tab and the standalone app.

The page is six sections in the order of the work (Dataset, Captions, Model, Training, Run, Results).
Each section module has `layout(ctx)` (creates its components) and `wire(ctx)` (connects events); all
layouts run first so that any event can use any section's components. The callbacks stay thin: the work
is in plain functions (forms, scanning, views, charts, data.editor) and in the backend.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import gradio as gr

from ..backend import TrainerBackend
from . import ROOT_ID, compat
from .forms import form_keys, raw_from_form
from .views import error_html


@dataclass
class PageContext:
    """What the sections share: the backend, one widget per config key, and other named components."""

    backend: TrainerBackend
    fields: Dict[str, Any] = field(default_factory=dict)  # config key -> widget
    parts: Dict[str, Any] = field(default_factory=dict)  # name -> component

    @property
    def field_names(self) -> List[str]:
        """The config keys that have a widget on this page, in TrainConfig's order."""
        return [name for name in form_keys() if name in self.fields]

    @property
    def field_inputs(self) -> List[Any]:
        return [self.fields[name] for name in self.field_names]

    def split(self, args: Sequence[Any]) -> tuple:
        """(form values, the remaining arguments) of a callback whose inputs are field_inputs + extras."""
        n = len(self.field_names)
        return list(args[:n]), list(args[n:])

    def raw(self, values: Sequence[Any]) -> Dict[str, Any]:
        """The form values as a raw config dict."""
        return raw_from_form(self.field_names, values)


def guarded(n_outputs: int, message_at: int = 0) -> Callable:
    """Wrap a callback so that any error is shown in its message output and nothing else changes."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - the page shows every failure; the server keeps serving
                out = [compat.no_change() for _ in range(n_outputs)]
                out[message_at] = error_html(exc)
                return out if n_outputs > 1 else out[0]

        return wrapper

    return decorate


def build_ui(backend: TrainerBackend, css: Optional[str] = None, js: Optional[str] = None) -> gr.Blocks:
    """The trainer's page. `css` is applied where gr.Blocks takes it (standalone passes the rest to
    launch); `js` (standalone only) is run on page load. Inside the WebUI neither is needed: the WebUI
    loads the extension's style.css and javascript/ itself."""
    from .sections import captions, dataset, model, prompt_assistant, results, run, training

    modules = (dataset, captions, model, training, run, results, prompt_assistant)
    ctx = PageContext(backend)
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
