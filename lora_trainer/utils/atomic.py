"""Atomic file writes: write to a temp file in the same folder, fsync, then rename over the target.

A crash, a full disk or an exception mid-write never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Union

PathLike = Union[str, Path]
# A temp file is named `.<target name>.<8 random characters>.tmp` (mkstemp): this many bytes longer.
TEMP_NAME_EXTRA = len(".") + len(".") + 8 + len(".tmp")


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: PathLike, data: bytes) -> Path:
    """Write bytes to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: PathLike, text: str) -> Path:
    """Write UTF-8 text to `target` atomically."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_save_safetensors(target: PathLike, tensors: Dict, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save a safetensors file atomically (tensors made contiguous, on CPU), its header in a fixed order."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        sort_safetensors_header(tmp)
    return Path(target)


def sort_safetensors_header(path: Path) -> None:
    """Rewrite the JSON header of a safetensors file with its keys sorted, in place.

    safetensors writes the metadata in hash-map order, which changes from one process to the next; sorted,
    the same tensors and metadata always give the same bytes (a file's sha256 then identifies its content).
    Only the header's key order changes; it keeps its length, so the tensor data is not touched.
    """
    with open(path, "rb+") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(length)
        header = json.loads(raw)
        metadata = header.pop("__metadata__", None)
        ordered = {} if metadata is None else {"__metadata__": dict(sorted(metadata.items()))}
        ordered.update(sorted(header.items()))
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > length:  # escaped differently from the writer's: keep the file as written
            return
        fh.seek(8)
        fh.write(text + b" " * (length - len(text)))


def atomic_write_with(target: PathLike, writer: Callable[[Path], None]) -> Path:
    """Run `writer(temp_path)` and move the result over `target` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)
