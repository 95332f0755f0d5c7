"""Keep our job's progress in the WebUI's `shared.state` while other WebUI work runs inside it."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

PROGRESS_FIELDS = ("job", "job_count", "job_no", "textinfo", "time_start", "job_timestamp",
                   "sampling_step", "sampling_steps")
STOP_FLAGS = ("interrupted", "stopping_generation")


@contextlib.contextmanager
def preserved_state(state: Any) -> Iterator[None]:
    """Restore the progress fields of `state` after the block; keep a stop request made meanwhile."""
    saved = {name: getattr(state, name) for name in PROGRESS_FIELDS if hasattr(state, name)}
    flags = {name: bool(getattr(state, name)) for name in STOP_FLAGS if hasattr(state, name)}
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(state, name, value)
        for name, was_set in flags.items():
            setattr(state, name, was_set or bool(getattr(state, name, False)))
