"""One gradio widget per config key, built from `forms.field_spec` (labels, tips, choices)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from .forms import field_spec

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
