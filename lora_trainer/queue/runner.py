"""Runs the queue's jobs one at a time, in order, each through the host's GPU queue (`run_job`).

`QueueRunner.run_next()` claims the first queued job, runs it with the executor of its kind and records
progress, result and error in the store; a failed job is recorded and the next one runs. A stop request
(`JobStore.cancel` on a running job, from any process) makes a training finish its step, save and stop,
as Interrupt does. `start()` runs the loop in a daemon thread, the way the page and the WebUI use it.
"""
from __future__ import annotations

import logging
import threading
import traceback
from typing import Any, Callable, Dict, Optional

from ..errors import LoraTrainerError
from .progress import ProgressWriter
from .store import Job, JobStore

Service = Any  # a service.TrainerService (not imported: the service imports this package)

log = logging.getLogger("lora_trainer")


class QueueRunner:
    """One job at a time from `store`, run with `service`'s host (its GPU queue, its folders)."""

    def __init__(self, store: JobStore, service: Service):
        from .executors import EXECUTORS

        self.store, self.service = store, service
        self.executors: Dict[str, Callable[[Service, Job, ProgressWriter], Dict[str, Any]]] = EXECUTORS
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ the loop
    def start(self) -> "QueueRunner":
        """Recover jobs of a process that died, then run jobs in a daemon thread until `close()`."""
        if self._thread is None or not self._thread.is_alive():
            self.store.recover()
            self._quit.clear()
            self._thread = threading.Thread(target=self._loop, name="lora-trainer-queue", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """A job was added or the queue resumed: look now instead of at the next poll."""
        self._wake.set()

    def close(self, timeout: Optional[float] = None) -> None:
        self._quit.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._quit.is_set():
            ran = None if self.service.jobs.status().active else self.run_next()
            if ran is None:
                self._wake.wait(0.5)
                self._wake.clear()

    def run_until_empty(self) -> int:
        """Run queued jobs until none is left (or the queue is paused); returns how many ran."""
        self.store.recover()
        count = 0
        while self.run_next() is not None:
            count += 1
        return count

    # ------------------------------------------------------------------ one job
    def run_next(self) -> Optional[Job]:
        """Claim and run the next queued job; returns it finished, or None when there is none."""
        job = self.store.claim_next()
        if job is None:
            return None
        writer = ProgressWriter(self.store, job.id)
        try:
            result = self.executors[job.kind](self.service, job, writer)
        except Exception as exc:  # a failed job is recorded, the queue goes on
            message = str(exc) if isinstance(exc, LoraTrainerError) else \
                f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            log.error("LoRA Trainer: queued %s job %d (%s) failed: %s", job.kind, job.id, job.name, exc,
                      exc_info=not isinstance(exc, LoraTrainerError))
            return self.store.finish(job.id, "failed", writer.result, message)
        writer.flush()
        state = result.pop("_state", "done")
        return self.store.finish(job.id, state, result)

