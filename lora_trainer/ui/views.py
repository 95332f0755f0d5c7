"""HTML fragments the page shows: messages, the dataset report, the job's status, the results table.

Plain functions of plain data (tested without a browser). Every text from the user or the disk is escaped.
`data-*` attributes carry the numbers a test (or the page's JS) reads.
"""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..data.doctor import DatasetReport
from ..errors import LoraTrainerError
from ..jobs import JobStatus

log = logging.getLogger("lora_trainer")
ACTIVE_STATES = ("running", "stopping")
CHECKPOINT_NAME = re.compile(r"-step\d{8}$")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def message_html(text: str, kind: str = "info") -> str:
    """A one-line message box; kind is info | ok | error."""
    return f'<div class="lt-msg lt-msg-{kind}" data-kind="{kind}">{esc(text)}</div>' if text else ""


def error_html(exc: BaseException) -> str:
    """The message for an error: the user's own for LoraTrainerError, with the type for anything else."""
    if isinstance(exc, LoraTrainerError):
        return message_html(str(exc), "error")
    if isinstance(exc, OSError):
        return message_html(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), "error")
    log.exception("the page hit an unexpected error")
    return message_html(f"unexpected error ({type(exc).__name__}: {exc}); see the server log", "error")


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---------------------------------------------------------------------------- dataset report
def report_html(report: DatasetReport, root: str) -> str:
    """The dataset report: a verdict line, then counts, folders, buckets and every problem."""
    verdict = "ready to train" if report.can_train else f"cannot train: {report.fatal}"
    kind = "ok" if report.can_train else "error"
    problems = report.problem_lines()
    body = "\n".join(report.summary_lines())
    parts = [f'<div class="lt-report" data-images="{report.num_images}" data-can-train="{int(report.can_train)}" '
             f'data-problems="{len(problems)}">',
             message_html(f"{root}: {verdict}", kind),
             f'<pre class="lt-pre">{esc(body)}</pre>']
    if problems:
        parts.append(f'<div class="lt-problems"><b>{len(problems)} problem(s)</b>'
                     f'<pre class="lt-pre">{esc(chr(10).join(problems))}</pre></div>')
    else:
        parts.append('<div class="lt-problems">No problems found.</div>')
    parts.append("</div>")
    return "".join(parts)


# ---------------------------------------------------------------------------- the job
def status_html(s: JobStatus) -> str:
    """State, step / total, it/s, ETA, loss and a progress bar (or the error) of the current job."""
    active = s.state in ACTIVE_STATES
    attrs = (f'class="lt-status lt-state-{esc(s.state)}" data-state="{esc(s.state)}" data-active="{int(active)}" '
             f'data-step="{s.step}" data-total="{s.total_steps}"')
    if s.state == "idle":
        return f'<div {attrs}>No training job has run since the server started.</div>'
    pct = 100.0 * s.step / s.total_steps if s.total_steps else 0.0
    bits = [f"<b>{esc(s.state)}</b>", esc(s.name), f"step {s.step} / {s.total_steps or '?'}"]
    if s.steps_per_second:
        bits.append(f"{s.steps_per_second:.2f} it/s")
    if active and s.total_steps:
        bits.append(f"ETA {format_eta(s.eta_seconds)}")
    if s.loss is not None:
        bits.append(f"loss {s.loss:.4f}")
    out = [f'<div {attrs}><div class="lt-status-line">{" &middot; ".join(bits)}</div>',
           f'<div class="lt-progress"><div class="lt-progress-bar" style="width:{pct:.1f}%"></div></div>']
    if s.lora_path and not active:
        out.append(f'<div class="lt-status-file">LoRA: <code>{esc(s.lora_path)}</code></div>')
    if s.error:
        out.append(f'<pre class="lt-pre lt-error">{esc(s.error)}</pre>')
    out.append("</div>")
    return "".join(out)


def log_text(s: JobStatus, last: int = 30) -> str:
    return "\n".join(s.messages[-last:])


# ---------------------------------------------------------------------------- results
RESULT_COLUMNS = (("name", "name"), ("size_mb", "MB"), ("rank", "rank"), ("alpha", "alpha"), ("steps", "steps"),
                  ("base_model", "base model"), ("trigger", "trigger"))


def results_html(items: Sequence[Dict[str, Any]], show_paths: bool = True) -> str:
    """A table of trained LoRAs with their metadata (and file paths standalone)."""
    if not items:
        return '<div class="lt-results" data-count="0">No trained LoRAs yet.</div>'
    head = "".join(f"<th>{esc(title)}</th>" for _, title in RESULT_COLUMNS) + ("<th>file</th>" if show_paths else "")
    rows = []
    for item in items:
        cells = "".join(f"<td>{esc(item.get(key))}</td>" for key, _ in RESULT_COLUMNS)
        if show_paths:
            cells += f"<td><code>{esc(item.get('path'))}</code></td>"
        rows.append(f'<tr data-name="{esc(item.get("name"))}">{cells}</tr>')
    return (f'<div class="lt-results" data-count="{len(items)}"><table class="lt-table"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>')


def final_results(items: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The finished LoRAs: intermediate `<name>-stepNNNNNNNN` checkpoints left out."""
    return [item for item in items if not CHECKPOINT_NAME.search(str(item.get("name", "")))]


def result_labels(items: Sequence[Dict[str, Any]]) -> List[str]:
    """One label per LoRA for the picker: its name, with its folder when two share a name."""
    names = [str(item.get("name")) for item in items]
    return [name if names.count(name) == 1 else f"{name} ({Path(str(item.get('path'))).parent.name})"
            for name, item in zip(names, items)]


def find_result(items: Sequence[Dict[str, Any]], label: Optional[str]) -> Optional[Dict[str, Any]]:
    """The LoRA whose picker label is `label`."""
    return next((item for item, text in zip(items, result_labels(items)) if text == label), None)
