"""A callback that keeps every engine event, for tests to look at."""
from __future__ import annotations

from typing import Any, List

from lora_trainer.events import Callback


class EventRecorder(Callback):
    """Keeps every event."""

    def __init__(self) -> None:
        self.events: List[Any] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event)

    def of_type(self, kind: type) -> List[Any]:
        return [e for e in self.events if isinstance(e, kind)]
