"""The persistent job queue for every long task (training, captioning, merge/combine/resize, grids).

`store.JobStore` keeps the jobs in SQLite, `runner.QueueRunner` runs them one at a time through the
host's GPU queue, `executors` says what each kind does. `JobQueue` is what the page, the HTTP routes and
the CLI use: it validates a job before it is stored and wakes the runner.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .store import KINDS, Job, JobStore, QueueError

Service = Any  # a service.TrainerService (not imported: the service imports this package)
if TYPE_CHECKING:
    from .runner import QueueRunner

log = logging.getLogger("lora_trainer")
DB_NAME = "queue.sqlite"
__all__ = ["DB_NAME", "KINDS", "Job", "JobQueue", "JobStore", "QueueError"]


class JobQueue:
    """The queue of one service: its store (a file in the service's data folder) and its runner."""

    def __init__(self, service: Service, path: Path):
        from .runner import QueueRunner

        self.service = service
        self.store = JobStore(path)
        self.runner: "QueueRunner" = QueueRunner(self.store, service)

    def add(self, kind: str, config: Dict[str, Any], name: str = "") -> Job:
        """Store a job after checking what can be checked now: a training config's keys and values (its
        dataset may still be prepared before it runs), the other kinds' kind name."""
        if kind not in KINDS:
            raise QueueError(f"unknown job kind {kind!r}: one of {', '.join(KINDS)}")
        if not isinstance(config, dict):
            raise QueueError("a job's config must be a JSON object")
        if kind in ("train", "text"):
            cfg = self.service.make_config(config) if kind == "train" else _text_config(config)
            config, name = cfg.to_dict(), name or cfg.effective_output_name
        job = self.store.add(kind, config, name or kind)
        self.runner.wake()
        return job

    def run_now(self, config: Any, kind: str = "train", train_fn: Optional[Callable[..., Any]] = None) -> Any:
        """Start a training at once, as a job of the queue (listed, progress recorded): the page's Start, the
        /train route, and the prompt assistant's text training (kind "text", its `train_fn`). Refused
        (JobRunning) while another queue job runs, even with the queue paused: the user asked for this one.
        Returns the JobManager's status, as Start always did."""
        from .executors import train_outcome
        from .progress import ProgressWriter, TrainRecorder

        self.store.recover()
        job = self.store.add_running(kind, config.to_dict(), config.effective_output_name)
        writer = ProgressWriter(self.store, job.id)

        def done(status: Any) -> None:
            try:
                writer.flush()
                self.store.finish(job.id, *train_outcome(status, writer))
            except Exception as exc:  # noqa: BLE001 - the training's own result is on disk already
                log.error("LoRA Trainer: recording the end of queue job %d failed: %s", job.id, exc)
            self.runner.wake()

        try:
            return self.service.jobs.start(config, [TrainRecorder(writer)], train_fn=train_fn, on_done=done)
        except Exception as exc:
            self.store.finish(job.id, "failed", None, str(exc))
            raise

    def list(self) -> List[Job]:
        return self.store.list()

    def get(self, job_id: int) -> Job:
        return self.store.get(job_id)

    def cancel(self, job_id: int) -> Job:
        return self.store.cancel(job_id)

    def retry(self, job_id: int) -> Job:
        job = self.store.retry(job_id)
        self.runner.wake()
        return job

    def move(self, job_id: int, index: int) -> Job:
        return self.store.move(job_id, index)

    def pause(self, paused: bool = True) -> bool:
        self.store.set_paused(paused)
        self.runner.wake()
        return paused

    def start(self) -> "JobQueue":
        """Recover what a crash left running (interrupted) and start running jobs in the background."""
        self.runner.start()
        return self

    def snapshot(self) -> Dict[str, Any]:
        """The page's and the API's view: every job, and whether the queue is paused."""
        return {"paused": self.store.paused(), "jobs": [j.to_dict() for j in self.list()]}


def _text_config(raw: Dict[str, Any]) -> Any:
    """A text-model training config (task: text), checked as `train --config` checks it."""
    from ..text.config import text_config_from_dict

    return text_config_from_dict(raw)
