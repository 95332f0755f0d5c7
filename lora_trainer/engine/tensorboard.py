"""TensorBoard logging of a run: loss, learning rate, validation loss and sample images (LoraRun adds it on rank 0)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ..events import Callback, CheckpointSaved, LossesRead, RunEnded, SampleImages, ValidationLoss


class TensorBoardLogger(Callback):
    """loss and learning rate to `output_dir/logs` (skipped with a warning if tensorboard is missing)."""

    def __init__(self, log_dir: Path, purge_step: Optional[int] = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as exc:  # noqa: BLE001 - tensorboard missing or broken
            logging.getLogger("lora_trainer").warning("TensorBoard logging off: %s", exc)
            self.writer = None
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def on_event(self, event: Any) -> None:
        from ..events import StepEnded

        if self.writer is None:
            return
        if isinstance(event, LossesRead):
            for step, loss in event.pairs:
                self.writer.add_scalar("loss", loss, step)
        elif isinstance(event, StepEnded):
            self.writer.add_scalar("lr", event.lr, event.step)
        elif isinstance(event, ValidationLoss):
            self.writer.add_scalar("validation_loss", event.loss, event.step)
        elif isinstance(event, SampleImages):
            import numpy as np
            from PIL import Image

            for i, path in enumerate(event.paths):
                with Image.open(path) as im:
                    self.writer.add_image(f"sample_{i:02d}", np.asarray(im.convert("RGB")), event.step,
                                          dataformats="HWC")
        elif isinstance(event, CheckpointSaved):
            self.writer.flush()  # a resumed run continues from here: everything up to it is on disk
        elif isinstance(event, RunEnded):
            self.writer.flush()
            self.writer.close()
