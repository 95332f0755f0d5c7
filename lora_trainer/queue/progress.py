"""A running job's progress in the store: written at most every POLL_SECONDS, with its stop flag read back."""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ..events import Callback, RunEnded, StepEnded
from .store import JobStore

POLL_SECONDS = 0.25  # how often a running job's progress is written and its stop flag read


class ProgressWriter:
    """Writes a job's progress to the store at most every POLL_SECONDS and reads its stop flag back."""

    def __init__(self, store: JobStore, job_id: int):
        self.store, self.job_id = store, job_id
        self.step, self.total, self.loss, self.eta = 0, 0, None, 0.0
        self.result: Optional[Dict[str, Any]] = None
        self._last, self._stop = 0.0, False

    def update(self, step: int, total: int, loss: Optional[float] = None, eta: float = 0.0,
               force: bool = False) -> None:
        self.step, self.total, self.eta = step, total, eta
        self.loss = loss if loss is not None else self.loss
        if force or time.monotonic() - self._last >= POLL_SECONDS:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        self._stop = self.store.progress(self.job_id, self.step, self.total, self.loss, self.eta, self.result)

    def stop_requested(self) -> bool:
        if time.monotonic() - self._last >= POLL_SECONDS:
            self.flush()
        return self._stop


class TrainRecorder(Callback):
    """The engine's events into a ProgressWriter; the engine's stop question answered from the store."""

    def __init__(self, writer: ProgressWriter):
        self.writer = writer

    def on_event(self, event: Any) -> None:
        if isinstance(event, StepEnded):
            self.writer.update(event.step, event.total_steps, event.loss, event.eta_seconds,
                               force=event.step == event.total_steps)
        elif isinstance(event, RunEnded) and event.lora_path is not None:
            self.writer.result = {"lora_path": str(event.lora_path)}
            self.writer.flush()

    def should_stop(self) -> bool:
        return self.writer.stop_requested()
