"""What a terminal run shows and how it stops: the progress bar (`TerminalProgress`) and Ctrl-C / SIGTERM
(`StopOnSignal`). Shared by the image commands (cli.py) and the text commands (text/cli.py)."""
from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Optional

from .events import Callback, CheckpointSaved, Message, RunStarted, StepEnded


class TerminalProgress(Callback):
    """A tqdm progress bar with step, loss, it/s and ETA; messages above it."""

    def __init__(self) -> None:
        self.bar = None
        self.last_loss: Optional[float] = None

    def on_event(self, event: Any) -> None:
        from tqdm import tqdm

        if isinstance(event, RunStarted):
            self.bar = tqdm(total=event.total_steps, initial=event.start_step, unit="step", dynamic_ncols=True)
        elif isinstance(event, StepEnded) and self.bar is not None:
            if event.loss is not None:
                self.last_loss = event.loss
            self.bar.set_postfix(epoch=event.epoch, loss=f"{self.last_loss:.4f}" if self.last_loss is not None else "-",
                                 lr=f"{event.lr:.2e}", refresh=False)
            self.bar.update(event.step - self.bar.n)
        elif isinstance(event, CheckpointSaved):
            self._write(f"saved {event.path}")
        elif isinstance(event, Message) and event.level >= logging.INFO:
            self._write(event.text if event.level < logging.WARNING else f"warning: {event.text}")

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            tqdm.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnSignal(Callback):
    """Ctrl-C / SIGTERM: finish the current step, save the LoRA and the state, exit 0. A second one quits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and saving (press Ctrl-C again to quit at once)", file=sys.stderr,
              flush=True)

    def should_stop(self) -> bool:
        return self.requested
