"""What the page's sections share (no gradio here): the page root's elem_id and the `PageContext`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

from ..service import TrainerService
from .forms import form_keys, raw_from_form

ROOT_ID = "lora_trainer"  # elem_id of the page's root (and of the WebUI tab); style.css is scoped to it


@dataclass
class PageContext:
    """What the sections share: the service, one widget per config key, and other named components."""

    service: TrainerService
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
