"""The persistent job queue on disk: one SQLite file (standard library, WAL mode), one row per job.

Every call opens its own connection and writes inside one `BEGIN IMMEDIATE` transaction, so any number of
threads and processes (HTTP handlers, the CLI, the runner) may share the file. Order is (position, id):
a new job goes last; `move` changes its position. A job that was running when its process died becomes
`interrupted` in `recover()`; `retry` queues it again with `resume` set, so a training continues from its
last saved state.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..errors import LoraTrainerError

KINDS = ("train", "caption", "merge", "combine", "resize", "grid", "text")
STATES = ("queued", "running", "done", "failed", "interrupted", "cancelled")
FINISHED = ("done", "failed", "interrupted", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    position REAL NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    eta_seconds REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    resume INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    owner_pid INTEGER
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class QueueError(LoraTrainerError):
    """A queue request that cannot be done (unknown job, wrong state)."""


class JobRunning(QueueError):
    """A job of the queue runs, so a training cannot start at once."""


@dataclass
class Job:
    """One row of the queue, safe to send to a page."""

    id: int
    kind: str
    name: str
    config: Dict[str, Any]
    state: str
    position: float
    step: int = 0
    total: int = 0
    loss: Optional[float] = None
    eta_seconds: float = 0.0
    created_at: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    result: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    resume: bool = False
    stop_requested: bool = False
    owner_pid: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["config"], data["result"] = json.loads(data["config"]), json.loads(data["result"])
    data["resume"], data["stop_requested"] = bool(data["resume"]), bool(data["stop_requested"])
    return Job(**data)


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobStore:
    """The queue's SQLite file; see the module docstring."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(self.path), timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer; kept in the file
            con.executescript(SCHEMA)
        finally:
            con.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    # ------------------------------------------------------------------ adding and reading
    def add(self, kind: str, config: Dict[str, Any], name: str = "") -> Job:
        """Append a job (last in order); `config` must be JSON."""
        if kind not in KINDS:
            raise QueueError(f"unknown job kind {kind!r}: one of {', '.join(KINDS)}")
        text = json.dumps(config)
        with self._tx() as db:
            last = db.execute("SELECT COALESCE(MAX(position), 0) FROM jobs").fetchone()[0]
            cur = db.execute("INSERT INTO jobs (kind, name, config, position, created_at) VALUES (?, ?, ?, ?, ?)",
                             (kind, name, text, last + 1, time.time()))
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone())

    def get(self, job_id: int) -> Job:
        with self._tx() as db:
            return self._get(db, job_id)

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise QueueError(f"no job {job_id} in the queue")
        return _job(row)

    def list(self) -> List[Job]:
        """Every job in queue order (finished ones included)."""
        with self._tx() as db:
            return [_job(r) for r in db.execute("SELECT * FROM jobs ORDER BY position, id")]

    # ------------------------------------------------------------------ the runner's side
    def claim_next(self) -> Optional[Job]:
        """Mark the first queued job running (owned by this process) and return it; None if none or paused."""
        with self._tx() as db:
            if self._paused(db) or db.execute("SELECT 1 FROM jobs WHERE state = 'running'").fetchone():
                return None
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY position, id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started_at = ?, finished_at = NULL, error = NULL, "
                       "stop_requested = 0, owner_pid = ? WHERE id = ?", (time.time(), os.getpid(), row[0]))
            return self._get(db, row[0])

    def add_running(self, kind: str, config: Dict[str, Any], name: str = "") -> Job:
        """Append a job already running (owned by this process): a training started with Start or /train.
        Refused, naming the running job, while another job runs."""
        with self._tx() as db:
            row = db.execute("SELECT id, kind, name FROM jobs WHERE state = 'running'").fetchone()
            if row is not None:
                raise JobRunning(f"queue job {row['id']} ({row['kind']} {row['name']}) is running: wait for it, or add "
                                 f"this one to the queue to run after it")
            last = db.execute("SELECT COALESCE(MAX(position), 0) FROM jobs").fetchone()[0]
            cur = db.execute("INSERT INTO jobs (kind, name, config, state, position, created_at, started_at, owner_pid)"
                             " VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                             (kind, name, json.dumps(config), last + 1, time.time(), time.time(), os.getpid()))
            return self._get(db, cur.lastrowid)

    def progress(self, job_id: int, step: int, total: int, loss: Optional[float], eta_seconds: float,
                 result: Optional[Dict[str, Any]] = None) -> bool:
        """Record progress; returns whether a stop was requested (from any process)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET step = ?, total = ?, loss = COALESCE(?, loss), eta_seconds = ? WHERE id = ?",
                       (int(step), int(total), loss, float(eta_seconds), job_id))
            if result is not None:
                db.execute("UPDATE jobs SET result = ? WHERE id = ?", (json.dumps(result), job_id))
            row = db.execute("SELECT stop_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return bool(row and row[0])

    def finish(self, job_id: int, state: str, result: Optional[Dict[str, Any]] = None,
               error: Optional[str] = None) -> Job:
        if state not in FINISHED:
            raise QueueError(f"{state!r} is not a finished state")
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, eta_seconds = 0 "
                       "WHERE id = ?", (state, json.dumps(result or {}), error, time.time(), job_id))
            return self._get(db, job_id)

    def recover(self) -> List[Job]:
        """Jobs left `running` by a process that is gone become `interrupted` (resumable); returns them."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
            dead = [_job(r) for r in rows if not _alive(r["owner_pid"])]
            for job in dead:
                db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                           (time.time(), "the program stopped while this job ran; resume it from its last "
                                         "saved state", job.id))
            return [self._get(db, j.id) for j in dead]

    # ------------------------------------------------------------------ the user's side
    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled; a running one is asked to stop (it saves, as Interrupt does)."""
        with self._tx() as db:
            job = self._get(db, job_id)
            if job.state == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ?", (time.time(), job_id))
            elif job.state == "running":
                db.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise QueueError(f"job {job_id} is {job.state}: only a queued or running job can be cancelled")
            return self._get(db, job_id)

    def retry(self, job_id: int) -> Job:
        """Queue a finished job again, last; an interrupted or stopped training resumes from its saved state."""
        with self._tx() as db:
            job = self._get(db, job_id)
            if job.state not in ("failed", "interrupted", "cancelled"):
                raise QueueError(f"job {job_id} is {job.state}: only a failed, interrupted or cancelled job can be "
                                 f"queued again")
            last = db.execute("SELECT COALESCE(MAX(position), 0) FROM jobs").fetchone()[0]
            resume = job.kind == "train" and job.state in ("interrupted", "cancelled")
            db.execute("UPDATE jobs SET state = 'queued', position = ?, resume = ?, error = NULL, finished_at = NULL,"
                       " stop_requested = 0 WHERE id = ?", (last + 1, int(resume), job_id))
            return self._get(db, job_id)

    def move(self, job_id: int, index: int) -> Job:
        """Put a queued job at `index` (0 = next to run) among the queued jobs."""
        with self._tx() as db:
            job = self._get(db, job_id)
            if job.state != "queued":
                raise QueueError(f"job {job_id} is {job.state}: only a queued job can be moved")
            others = [r[0] for r in db.execute("SELECT position FROM jobs WHERE state = 'queued' AND id != ? "
                                               "ORDER BY position, id", (job_id,))]
            index = max(0, min(int(index), len(others)))
            if not others:
                return job
            if index == 0:
                position = others[0] - 1
            elif index == len(others):
                position = others[-1] + 1
            else:
                position = (others[index - 1] + others[index]) / 2
            db.execute("UPDATE jobs SET position = ? WHERE id = ?", (position, job_id))
            return self._get(db, job_id)

    def set_paused(self, paused: bool) -> None:
        """A paused queue starts no new job (the running one finishes); the GPU is free for generating."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', ?)", ("1" if paused else "0",))

    def paused(self) -> bool:
        with self._tx() as db:
            return self._paused(db)

    @staticmethod
    def _paused(db: sqlite3.Connection) -> bool:
        row = db.execute("SELECT value FROM settings WHERE key = 'paused'").fetchone()
        return bool(row and row[0] == "1")
