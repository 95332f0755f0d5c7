"""One run owns its output folder: an OS-level lock, and the files of an earlier run are never mixed with
or replaced by a new run's without being asked.

- The lock is `fcntl.flock` (Windows: `msvcrt.locking`) on `output_dir/.lora_trainer.lock`. The operating
  system drops it when the process ends, however it ends, so a killed run never leaves a stale lock; a
  second run into a live run's folder is refused at once, naming the other process.
- An earlier run's files (its LoRA, step checkpoints, training state, samples, logs) make a new run
  refused unless it resumes (`resume: true`, which continues and keeps them) or `overwrite: true` asks
  for them to be deleted when the new run starts (after its model loaded, just before its first write).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import IO, List, Optional

from ..config import PATH_KEYS, TrainConfig
from ..errors import LoraTrainerError
from ..utils.atomic import TEMP_NAME_EXTRA
from ..utils.names import name_bytes, name_limit

LOCK_FILE = ".lora_trainer.lock"
RUN_FOLDERS = ("state", "samples", "logs")  # written by every run into output_dir (not per output_name)
STEP_PATTERN = re.compile(r"-step\d{8,}")
SIDECARS = (".json", ".preview.png")


class FolderBusy(LoraTrainerError):
    """Another live run holds the output folder."""


def step_checkpoint_name(name: str, step: int) -> str:
    """`<name>-stepNNNNNNNN.safetensors`, the file of a checkpoint saved at `step`."""
    return f"{name}-step{step:08d}.safetensors"


def run_file_names(name: str) -> List[str]:
    """Every file name a run called `name` writes into output_dir (the longest step number assumed)."""
    lora = f"{name}.safetensors"
    return [lora, step_checkpoint_name(name, 99_999_999), *(f"{name}{s}" for s in SIDECARS), "config.yaml"]


def check_name_fits(output_dir: Path, name: str) -> None:
    """The longest file the run writes (a step checkpoint's temp file) fits the file system's name limit."""
    limit = name_limit(output_dir)
    longest = max(name_bytes(n) for n in run_file_names(name)) + TEMP_NAME_EXTRA
    if longest > limit:
        room = limit - (longest - name_bytes(name))
        raise LoraTrainerError(f"output_name {name[:40]!r}... is {name_bytes(name)} bytes long; with the step "
                               f"checkpoints' suffix and temporary files the file system of {str(output_dir)!r} "
                               f"allows at most {room} bytes: choose a shorter output_name")


def previous_run_files(output_dir: Path, name: str) -> List[Path]:
    """What an earlier run left in `output_dir` that a new run called `name` would replace or mix with."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [out / f"{name}{suffix}" for suffix in (".safetensors", *SIDECARS)]
    found = [p for p in found if p.exists()]
    for p in sorted(out.glob("*.safetensors")):
        if p.name.startswith(name + "-step") and STEP_PATTERN.fullmatch(p.stem[len(name):]):
            found.append(p)
    found += [out / d for d in RUN_FOLDERS if (out / d).is_dir() and any((out / d).iterdir())]
    return found


def describe(paths: List[Path], limit: int = 6) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_no_earlier_run(output_dir: Path, name: str, resume, overwrite: bool) -> List[Path]:
    """Refuse a new run into a folder holding an earlier run, unless it resumes or may overwrite; returns the
    files that `overwrite` will delete (empty when resuming or when there are none)."""
    if resume:
        return []
    found = previous_run_files(output_dir, name)
    if found and not overwrite:
        raise LoraTrainerError(
            f"output_dir {str(output_dir)!r} holds an earlier run ({describe(found)}). A new run never replaces "
            f"it silently: continue it with resume: true (--set resume=true), choose another output_name or "
            f"output_dir, or replace it with overwrite: true (--overwrite), which deletes those files")
    return found


def delete_earlier_run(paths: List[Path]) -> None:
    """Delete an earlier run's files (only what `previous_run_files` listed)."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def effective_config(config: TrainConfig) -> TrainConfig:
    """The config a run writes to `output_dir/config.yaml`: absolute paths (it works from any folder) and
    overwrite off (running it again never deletes this run)."""
    paths = {k: os.path.abspath(getattr(config, k)) for k in PATH_KEYS if getattr(config, k)}
    return dataclasses.replace(config, overwrite=False, **paths)


def resume_command(output_dir: Path, nproc: int = 1, several_machines: bool = False) -> str:
    """The command that continues the run in `output_dir` exactly (its effective config.yaml, overrides included);
    a data-parallel run of `nproc` processes on one machine continues with as many, one on several machines
    with the user's own torchrun command."""
    config = shlex.quote(str(Path(output_dir) / "config.yaml"))
    if several_machines:
        return f"torchrun <the same options> -m lora_trainer train --config {config} --set resume=true"
    return f"python -m lora_trainer train --config {config} --set resume=true" + (f" --nproc {nproc}" if nproc > 1 else "")


class FolderLock:
    """An exclusive OS lock on `output_dir/.lora_trainer.lock`, held from setup to the end of a run."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._fh: Optional[IO[str]] = None

    def acquire(self, record: bool = True) -> "FolderLock":
        """Take the lock or raise FolderBusy naming the process that holds it; `record`: write this process
        into the lock file for the next one to name."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        if not _try_lock(fh):
            fh.seek(0)
            holder = _holder_text(fh.read())
            fh.close()
            raise FolderBusy(f"output_dir {str(self.path.parent)!r} is in use by another training run ({holder}); "
                             f"wait for it to finish, stop it, or choose another output_dir")
        if record:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv), "started": time.time()}))
            fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            _unlock(self._fh)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_not_locked(output_dir: Path) -> None:
    """Raise FolderBusy if a live run holds `output_dir` (takes and releases the lock at once)."""
    if (Path(output_dir) / LOCK_FILE).exists():
        FolderLock(output_dir).acquire(record=False).release()


def _holder_text(recorded: str) -> str:
    try:
        info = json.loads(recorded)
        pid = int(info["pid"])
    except (ValueError, KeyError, TypeError):
        return "its process is unknown"
    command = _process_command(pid) or info.get("command") or ""
    return f"pid {pid}" + (f": {command}" if command else "")


def _process_command(pid: int) -> Optional[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part) or None


if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt

    _FAR = 1 << 30  # lock a byte far past the text, so the holder's pid stays readable

    def _try_lock(fh) -> bool:
        fh.seek(_FAR)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fh) -> None:
        fh.seek(_FAR)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
else:
    import fcntl

    def _try_lock(fh) -> bool:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
