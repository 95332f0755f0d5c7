"""One gradio widget per config key, built from `forms.field_spec` (labels, tips, choices), and the guard
every callback of the page runs in."""
from __future__ import annotations

import functools
from typing import Any, Callable

import gradio as gr

from . import compat
from .forms import field_spec
from .views import error_html

FIELD_ID = "lora_trainer_cfg_{}"


def field_widget(name: str, **overrides: Any) -> Any:
    """The widget for config key `name` (elem_id `lora_trainer_cfg_<name>`)."""
    spec = field_spec(name)
    common = dict(label=spec.label, info=spec.tip, elem_id=FIELD_ID.format(name))
    common.update(overrides)
    if spec.kind == "bool":
        return gr.Checkbox(value=spec.default, **common)
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), value=spec.default, **common)
    if spec.kind == "int":
        return gr.Number(value=spec.default, precision=0, **common)
    if spec.kind == "float":
        return gr.Number(value=spec.default, **common)
    placeholder = "empty: default" if spec.optional else ""
    return gr.Textbox(value=spec.default, lines=1, max_lines=1, placeholder=placeholder, **common)


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
