"""Training text on disk -> records: plain documents from `.txt` files and `{"text": ...}` lines, and
prompt/completion pairs from `{"prompt": ..., "completion": ...}` lines of `.jsonl` files.

Every problem names the file (and the line for .jsonl) and says what was expected.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Union

from ..errors import DatasetError

EXTENSIONS = (".txt", ".jsonl")
PAIR_SHAPE = '{"text": "..."} or {"prompt": "...", "completion": "..."}'


@dataclass(frozen=True)
class TextRecord:
    """One document (`text`) or one prompt/completion pair; `source` is `file:line` for messages."""

    source: str
    text: Optional[str] = None
    prompt: Optional[str] = None
    completion: Optional[str] = None

    @property
    def is_pair(self) -> bool:
        return self.completion is not None


def data_files(path: Union[str, Path]) -> List[Path]:
    """The .txt / .jsonl files of `path` (a file, or a folder searched recursively; hidden files skipped)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"train_data {str(path)!r} does not exist: give a .txt or .jsonl file, or a folder of them")
    if path.is_file():
        if path.suffix.lower() not in EXTENSIONS:
            raise DatasetError(f"train_data {str(path)!r}: {path.suffix or 'no extension'} files are not read; "
                               f"use .txt (plain text) or .jsonl ({PAIR_SHAPE} per line)")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DatasetError(f"train_data {str(path)!r} has no .txt or .jsonl files")
    return files


def split_txt(text: str, unit: str) -> List[str]:
    """A .txt file's documents: paragraphs (blank-line separated), lines, or the whole file."""
    if unit == "line":
        parts = text.splitlines()
    elif unit == "paragraph":
        parts = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
    else:
        parts = [text]
    return [p.strip() for p in parts if p.strip()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _jsonl_records(path: Path) -> Iterator[TextRecord]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc.msg}); each line must be {PAIR_SHAPE}") from None
        if isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(item.get("completion"), str):
            if item["completion"].strip():
                yield TextRecord(where, prompt=item["prompt"], completion=item["completion"])
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            if item["text"].strip():
                yield TextRecord(where, text=item["text"])
        else:
            found = f"keys {sorted(item)}" if isinstance(item, dict) else type(item).__name__
            raise DatasetError(f"{where}: expected {PAIR_SHAPE} (text values), found {found}")


def read_records(path: Union[str, Path], txt_unit: str = "paragraph") -> List[TextRecord]:
    """Every record of the training data, in file order; DatasetError when there is none."""
    records: List[TextRecord] = []
    files = data_files(path)
    for file in files:
        if file.suffix.lower() == ".jsonl":
            records.extend(_jsonl_records(file))
        else:
            records.extend(TextRecord(f"{file}:{i + 1}", text=doc)
                           for i, doc in enumerate(split_txt(_read_text(file), txt_unit)))
    if not records:
        names = ", ".join(str(f) for f in files[:5]) + (" ..." if len(files) > 5 else "")
        raise DatasetError(f"train_data {str(path)!r} holds no text to train on (read: {names}); empty lines and "
                           f"empty completions are skipped")
    return records
