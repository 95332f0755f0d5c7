"""Where captions go: a metadata CSV (`file_name,text`) or `<image>.txt` sidecars.

Both are checked for writability when built, i.e. before any model loads. "Already captioned" means
what the trainer would read: a non-empty CSV row or a non-empty sidecar (see `data/captions.py`).
Rows and files that are not recaptioned are left byte-identical: a CSV is merged line by line (the rows
of recaptioned images get the new text, other columns kept; new images are appended; every other line
keeps its bytes).
"""
from __future__ import annotations

import codecs
import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..data.captions import (FILE_COLUMNS, TEXT_COLUMNS, lookup_csv, read_metadata_csv, sidecar_caption,
                             write_metadata_csv)
from ..errors import CaptionError
from ..utils.atomic import atomic_write_bytes, atomic_write_text


def check_writable_folder(folder: Path, what: str) -> None:
    """CaptionError unless a file can be created in `folder` (a real probe, not just permission bits)."""
    if not folder.is_dir():
        raise CaptionError(f"cannot write {what}: folder {str(folder)!r} does not exist (create it first)")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CaptionError(f"cannot write {what} in {str(folder)!r}: {exc.strerror or exc}") from None


class CaptionTarget:
    """Base class of the two output formats."""

    location: Path  # the CSV file, or the image folder for sidecars

    def existing(self, rel: str, image: Path) -> Optional[str]:
        """The caption the trainer would use now (None when there is none or it is empty)."""
        raise NotImplementedError

    def check_images_writable(self, images: Sequence[Path]) -> None:
        """Raise CaptionError if the captions of these images cannot be written."""

    def put(self, rel: str, image: Path, caption: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make everything `put` so far durable."""

    def notes(self) -> List[str]:
        """Things the user should know after the run (one line each)."""
        return []


def _columns(header: List[str]) -> Tuple[int, int]:
    lower = [h.strip().lower() for h in header]
    file_col = next(lower.index(c) for c in FILE_COLUMNS if c in lower)
    text_col = next(lower.index(c) for c in TEXT_COLUMNS if c in lower)
    return file_col, text_col


def _row_name(value: str) -> str:
    return value.strip().replace("\\", "/")


class CsvTarget(CaptionTarget):
    """`file_name,text` rows; file names relative to the image folder, '/'-separated."""

    def __init__(self, root: Path, output: Optional[str], overwrite: bool):
        self.location = Path(output) if output else root / "metadata.csv"
        if self.location.is_dir():
            raise CaptionError(f"--output {str(self.location)!r} is a folder: give a CSV file name, e.g. "
                               f"{str(self.location / 'metadata.csv')!r}")
        check_writable_folder(self.location.parent, f"the caption CSV {self.location.name!r}")
        if self.location.exists() and not os.access(self.location, os.W_OK):
            raise CaptionError(f"--output {str(self.location)!r} is read-only")
        self.rows: Dict[str, str] = read_metadata_csv(self.location) if self._has_rows() else {}
        self.pending: Dict[str, str] = {}

    def _has_rows(self) -> bool:
        return self.location.is_file() and self.location.stat().st_size > 0

    def _key(self, rel: str) -> Optional[str]:
        """The name under which the CSV already lists this image (its path, or its bare file name)."""
        for key in (rel, rel.rsplit("/", 1)[-1]):
            if key in self.rows:
                return key
        return None

    def existing(self, rel: str, image: Path) -> Optional[str]:
        return lookup_csv(self.rows, rel) or sidecar_caption(image, ".txt") or None

    def put(self, rel: str, image: Path, caption: str) -> None:
        self.pending[rel] = caption

    def flush(self) -> None:
        if not self.pending:
            return
        if not self._has_rows():
            write_metadata_csv(self.location, self.pending)
        else:
            atomic_write_bytes(self.location, self._merged(self.location.read_bytes()))
        for rel, text in self.pending.items():
            self.rows[self._key(rel) or rel] = text
        self.pending = {}

    def _merged(self, raw: bytes) -> bytes:
        """The file with pending captions in: rows of recaptioned images get the new text, new images are
        appended; every other line keeps its exact bytes (quoting, line ends, other columns)."""
        bom = raw.startswith(codecs.BOM_UTF8)
        lines = io.StringIO(raw.decode("utf-8-sig"), newline="").readlines()
        replaced = {key: text for rel, text in self.pending.items() for key in [self._key(rel)] if key}
        chunks: List[str] = []
        header: List[str] = []
        used = 0
        reader = csv.reader(lines)
        for row in reader:
            chunk, used = "".join(lines[used:reader.line_num]), reader.line_num  # the record's own lines
            if not row:  # a blank line
                pass
            elif not header:
                header, (file_col, text_col) = row, _columns(row)
                end = "\r\n" if chunk.endswith("\r\n") else "\n"
            elif row and len(row) > file_col and _row_name(row[file_col]) in replaced:
                row = row + [""] * (len(header) - len(row))
                row[text_col] = replaced[_row_name(row[file_col])]
                chunk = _csv_line(row, end)
            chunks.append(chunk)
        if chunks and not chunks[-1].endswith("\n"):
            chunks[-1] += end
        for rel, text in self.pending.items():
            if self._key(rel) is None:
                row = [""] * len(header)
                row[file_col], row[text_col] = rel, text
                chunks.append(_csv_line(row, end))
        return (codecs.BOM_UTF8 if bom else b"") + "".join(chunks).encode("utf-8")


def _csv_line(row: List[str], end: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=end).writerow(row)
    return buf.getvalue()


class TxtTarget(CaptionTarget):
    """`<image-stem>.txt` beside each image."""

    def __init__(self, root: Path, output: Optional[str], overwrite: bool):
        if output and Path(output).resolve() != root.resolve():
            raise CaptionError("with --format txt the captions are written beside the images (<image>.txt): "
                               "leave out --output")
        self.location = root
        csv_path = root / "metadata.csv"
        self.csv_rows = read_metadata_csv(csv_path) if csv_path.is_file() else {}
        self.shadowed: List[str] = []

    def existing(self, rel: str, image: Path) -> Optional[str]:
        return sidecar_caption(image, ".txt") or lookup_csv(self.csv_rows, rel) or None

    def check_images_writable(self, images: Sequence[Path]) -> None:
        for folder in sorted({p.parent for p in images}):
            check_writable_folder(folder, "caption files")

    def put(self, rel: str, image: Path, caption: str) -> None:
        atomic_write_text(image.with_suffix(".txt"), caption)
        if lookup_csv(self.csv_rows, rel) is not None:
            self.shadowed.append(rel)

    def notes(self) -> List[str]:
        if not self.shadowed:
            return []
        return [f"{len(self.shadowed)} image(s) (first: {self.shadowed[0]}) also have a row in "
                f"{self.location / 'metadata.csv'}, which the trainer reads before .txt files: edit or remove those rows"]


TARGETS = {"csv": CsvTarget, "txt": TxtTarget}
