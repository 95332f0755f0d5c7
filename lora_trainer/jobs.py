"""Server-side training jobs: one at a time, in a background thread, observable by any number of pages.

The web page (standalone or the WebUI tab) starts a job and polls `status()`; reloading the page just
polls again. How the job body runs is pluggable (`runner`): standalone it is called directly; inside
the WebUI it goes through the WebUI's GPU queue so txt2img and training never overlap.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .config import TrainConfig
from .errors import LoraTrainerError
from .events import Callback, CheckpointSaved, LossesRead, Message, RunEnded, RunStarted, SampleImages, StepEnded

log = logging.getLogger("lora_trainer")
Runner = Callable[[Callable[[], Any]], Any]
MAX_MESSAGES = 200


class JobBusy(LoraTrainerError):
    """A job is already running; only one runs at a time."""


@dataclass
class JobStatus:
    """A snapshot of the current (or last) job, safe to send to a page."""

    state: str = "idle"  # idle | running | stopping | finished | stopped | failed
    name: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: Optional[float] = None
    steps_per_second: float = 0.0
    eta_seconds: float = 0.0
    losses: List[List[float]] = field(default_factory=list)  # [step, loss] pairs
    messages: List[str] = field(default_factory=list)
    samples: List[str] = field(default_factory=list)
    checkpoints: List[str] = field(default_factory=list)
    lora_path: Optional[str] = None
    error: Optional[str] = None
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in ("running", "stopping")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class JobRecorder(Callback):
    """Turns engine events into the job's status; answers the engine's stop question."""

    def __init__(self, status: JobStatus, lock: threading.Lock, stop_flag: threading.Event):
        self.status = status
        self.lock = lock
        self.stop_flag = stop_flag

    def on_event(self, event: Any) -> None:
        with self.lock:
            s = self.status
            if isinstance(event, RunStarted):
                s.total_steps, s.step = event.total_steps, event.start_step
            elif isinstance(event, StepEnded):
                s.step, s.total_steps, s.epoch = event.step, event.total_steps, event.epoch
                s.steps_per_second, s.eta_seconds = event.steps_per_second, event.eta_seconds
                if event.loss is not None:
                    s.loss = event.loss
            elif isinstance(event, LossesRead):
                s.losses.extend([step, loss] for step, loss in event.pairs)
            elif isinstance(event, Message):
                s.messages = (s.messages + [event.text])[-MAX_MESSAGES:]
            elif isinstance(event, CheckpointSaved):
                s.checkpoints.append(str(event.path))
            elif isinstance(event, SampleImages):
                s.samples = [str(p) for p in event.paths] + s.samples
            elif isinstance(event, RunEnded) and event.lora_path is not None:
                s.lora_path = str(event.lora_path)

    def should_stop(self) -> bool:
        return self.stop_flag.is_set()


def run_directly(body: Callable[[], Any]) -> Any:
    return body()


class JobManager:
    """Starts training jobs in a thread (one at a time) and reports their status."""

    def __init__(self, runner: Runner = run_directly,
                 train_fn: Optional[Callable[[TrainConfig, Sequence[Callback]], Any]] = None):
        self.runner = runner
        self.train_fn = train_fn or _default_train
        self._lock = threading.Lock()
        self._status = JobStatus()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, config: TrainConfig, callbacks: Sequence[Callback] = ()) -> JobStatus:
        """Start training `config`; raises JobBusy if a job is running."""
        with self._lock:
            self._refuse_if_busy()
            self._stop.clear()
            self._status = JobStatus(state="running", name=config.effective_output_name, started_at=time.time())
            status = self._status
        recorder = JobRecorder(status, self._lock, self._stop)
        self._thread = threading.Thread(target=self._body, args=(config, [recorder, *callbacks], status),
                                        name="lora-trainer-job", daemon=True)
        self._thread.start()
        return self.status()

    def refuse_if_busy(self) -> None:
        """Raise JobBusy if a job is running (checked before anything else looks at its folder)."""
        with self._lock:
            self._refuse_if_busy()

    def _refuse_if_busy(self) -> None:
        if self._status.active:
            raise JobBusy(f"a training job is already running ({self._status.name}, step "
                          f"{self._status.step}/{self._status.total_steps}); stop it or wait")

    def _body(self, config: TrainConfig, callbacks: List[Callback], status: JobStatus) -> None:
        try:
            result = self.runner(lambda: self.train_fn(config, callbacks))
            with self._lock:
                path = getattr(result, "lora_path", None)
                status.lora_path = str(path) if path else status.lora_path
                status.state = "stopped" if getattr(result, "stopped_early", False) else "finished"
        except Exception as exc:  # the page shows every failure, the console logs it
            with self._lock:
                status.state = "failed"
                status.error = str(exc) if isinstance(exc, LoraTrainerError) else \
                    f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            # the console hears it too (a WebUI's log is where people look first); a traceback only for a bug
            log.error("LoRA Trainer: training %s failed: %s", status.name, exc,
                      exc_info=not isinstance(exc, LoraTrainerError))
        finally:
            with self._lock:
                status.finished_at = time.time()

    def stop(self) -> JobStatus:
        """Ask the running job to finish its current step, save, and stop."""
        with self._lock:
            if self._status.active:
                self._status.state = "stopping"
                self._stop.set()
        return self.status()

    def status(self) -> JobStatus:
        with self._lock:
            return JobStatus(**{k: (list(v) if isinstance(v, list) else v)
                                for k, v in self._status.__dict__.items()})

    def wait(self, timeout: Optional[float] = None) -> JobStatus:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()


def _default_train(config: TrainConfig, callbacks: Sequence[Callback]):
    from .engine.run import train

    return train(config, callbacks)


def list_loras(folder: Path) -> List[Dict[str, Any]]:
    """LoRA files in a folder with their key metadata, newest first (for the Results section)."""
    from .formats.kohya import read_metadata

    out = []
    for path in sorted(Path(folder).glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            meta = read_metadata(path)
        except LoraTrainerError:
            continue
        preview = path.with_name(f"{path.stem}.preview.png")
        out.append({"name": path.stem, "path": str(path), "size_mb": round(path.stat().st_size / 2**20, 2),
                    "rank": meta.get("ss_network_dim"), "alpha": meta.get("ss_network_alpha"),
                    "steps": meta.get("ss_steps"), "base_model": meta.get("ss_sd_model_name"),
                    "trigger": meta.get("modelspec.trigger_phrase", ""),
                    "preview": str(preview) if preview.is_file() else None})
    return out
