"""How the engine talks to the outside world: small event objects passed to callbacks.

The engine never prints. The CLI attaches a terminal progress bar, the WebUI tab attaches a callback
that updates `shared.state`, the standalone UI one that feeds its page; TensorBoard is one more callback.
A callback may ask the run to stop by returning True from `should_stop` ("Stop and save").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("lora_trainer")


@dataclass
class RunStarted:
    total_steps: int
    steps_per_epoch: int
    epochs: int
    num_images: int
    start_step: int = 0
    info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StepEnded:
    step: int  # 1-based count of optimizer steps done
    total_steps: int
    epoch: int
    loss: Optional[float]  # None when not read back this step (see log_every_n_steps)
    lr: float
    steps_per_second: float
    eta_seconds: float
    samples_seen: int


@dataclass
class LossesRead:
    """Losses read back from the device (every log_every_n_steps): (step, loss) pairs, in order."""

    pairs: List[Tuple[int, float]]


@dataclass
class Message:
    text: str
    level: int = logging.INFO


@dataclass
class CheckpointSaved:
    path: Path
    step: int
    final: bool = False


@dataclass
class SampleImages:
    step: int
    paths: List[Path]


@dataclass
class ValidationLoss:
    step: int
    loss: float


@dataclass
class RunEnded:
    lora_path: Optional[Path]
    steps_done: int
    stopped_early: bool
    summary: Dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class: override the hooks you need. All hooks are optional."""

    def on_event(self, event: Any) -> None:
        """Called for every event object the engine emits."""

    def should_stop(self) -> bool:
        """Return True to finish the current step, save and stop."""
        return False


class Events:
    """Fan-out of engine events to a list of callbacks; also mirrors messages to `logging`."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks: List[Callback] = list(callbacks)

    def add(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def emit(self, event: Any) -> None:
        if isinstance(event, Message):
            log.log(event.level, event.text, extra={"lora_trainer_event": True})
        for cb in self.callbacks:
            cb.on_event(event)

    def say(self, text: str, level: int = logging.INFO) -> None:
        self.emit(Message(text, level))

    def stop_requested(self) -> bool:
        return any(cb.should_stop() for cb in self.callbacks)
