"""File names a user chooses (the LoRA's `output_name`, a checkpoint's name): plain names only.

A plain name is one file in the folder it is written to: no folder part, not `.`/`..`, no control
characters, and none of the characters Windows forbids (`<>:"/\\|?*`; `:` and `<>` would also break the
WebUI's `<lora:name:weight>` prompt syntax), no leading dot (hidden file) and no trailing dot or space
(Windows drops them). Whether it is short enough depends on the file system: `name_limit(folder)`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

FORBIDDEN_CHARS = '<>:"/\\|?*'
DEFAULT_NAME_MAX = 255  # bytes; ext4, XFS, btrfs, APFS, NTFS (UTF-16 units) all allow at least this


def name_problem(name: str) -> Optional[str]:
    """Why `name` is not a plain file name, or None when it is."""
    if not name or not name.strip():
        return "it is empty"
    bad = sorted({c for c in name if ord(c) < 32 or ord(c) == 127})
    if bad:
        return "it contains control characters (" + ", ".join(f"\\x{ord(c):02x}" for c in bad) + ")"
    bad = sorted({c for c in name if c in FORBIDDEN_CHARS})
    if bad:
        return f"it contains {' '.join(bad)} (a file name may not contain any of {FORBIDDEN_CHARS})"
    if name.startswith("."):
        return "it starts with a dot (a hidden file, or a path like '..')"
    if name != name.rstrip(". "):
        return "it ends with a dot or a space"
    if os.path.isabs(name):  # pragma: no cover - a separator was refused above
        return "it is an absolute path"
    return None


def name_limit(folder: Path) -> int:
    """The longest file name (in bytes) the file system of `folder` (or its nearest existing parent) allows."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return int(os.pathconf(str(folder), "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        return DEFAULT_NAME_MAX


def name_bytes(name: str) -> int:
    """Length of a file name as the file system counts it (UTF-8 bytes)."""
    return len(name.encode("utf-8", errors="surrogatepass"))
