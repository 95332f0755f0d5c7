"""Report training progress through the WebUI's `shared.state`, and stop on its Interrupt button."""
from __future__ import annotations

from typing import Any

from ...events import RunStarted, SampleImages, StepEnded


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SharedStateProgress:
    """A Callback that mirrors steps into the WebUI's `shared.state` (job_count / job_no / textinfo) and stops
    on its Interrupt button."""

    def __init__(self, state: Any, job: str = "lora_trainer"):
        self.state = state
        self.job = job

    def on_event(self, event: Any) -> None:
        st = self.state
        if isinstance(event, RunStarted):
            st.job = self.job
            st.job_count = event.total_steps
            st.job_no = event.start_step
            st.textinfo = f"LoRA training: {event.num_images} image(s), {event.total_steps} steps"
        elif isinstance(event, StepEnded):
            st.job_count = event.total_steps
            st.job_no = event.step
            loss = f"loss {event.loss:.4f}, " if event.loss is not None else ""
            st.textinfo = (f"LoRA training step {event.step}/{event.total_steps}, epoch {event.epoch}, {loss}"
                           f"{event.steps_per_second:.2f} it/s, ETA {format_eta(event.eta_seconds)}")
        elif isinstance(event, SampleImages) and event.paths:
            from PIL import Image

            try:
                self.state.assign_current_image(Image.open(event.paths[0]))
            except Exception:  # noqa: BLE001 - a preview is optional
                pass

    def should_stop(self) -> bool:
        return bool(getattr(self.state, "interrupted", False))
