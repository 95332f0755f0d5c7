"""5b. Queue: "Add to queue" (beside Start, in the Run section) stores the form's training as a job of the
persistent queue (lora_trainer/queue); this panel lists every job of every kind with live progress
(refreshed by the Run section's hidden poll button), and cancels, stops, retries (resumes) or moves one,
or pauses the queue so the GPU is free for generating."""
import logging
from typing import Any, Dict, List

import gradio as gr

from .. import compat
from ..context import PageContext
from ..forms import raw_from_form
from ..views import esc, format_eta, message_html
from ..widgets import guarded

log = logging.getLogger("lora_trainer")


def queue_html(snapshot: Dict[str, Any]) -> str:
    """The jobs as a table (data-* attributes for tests and styles), newest last."""
    rows = []
    for job in snapshot["jobs"]:
        total, step = job["total"], job["step"]
        pct = int(100 * step / total) if total else 0
        loss = f"{job['loss']:.4f}" if job["loss"] is not None else ""
        eta = format_eta(job["eta_seconds"]) if job["state"] == "running" and job["eta_seconds"] else ""
        note = (job["error"] or "").splitlines()[0] if job["error"] else \
            next(iter(job["result"].values()), "") if job["result"] else ""
        rows.append(
            f'<tr class="lt-job" data-id="{job["id"]}" data-state="{job["state"]}" data-step="{step}" '
            f'data-total="{total}"><td>{job["id"]}</td><td>{esc(job["kind"])}</td><td>{esc(job["name"])}</td>'
            f'<td>{job["state"]}</td><td><progress max="100" value="{pct}"></progress> {step}/{total}</td>'
            f'<td>{loss}</td><td>{eta}</td><td>{esc(note)}</td></tr>')
    paused = ' <b class="lt-queue-paused">paused</b>' if snapshot["paused"] else ""
    head = "<tr><th>#</th><th>kind</th><th>name</th><th>state</th><th>progress</th><th>loss</th><th>ETA</th>" \
           "<th>result / error</th></tr>"
    body = "".join(rows) or '<tr><td colspan="8">no jobs yet</td></tr>'
    return f'<div class="lt-queue" data-jobs="{len(rows)}">Queue{paused}<table>{head}{body}</table></div>'


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    with gr.Column(elem_id="lora_trainer_queue_section", elem_classes=["lt-section"]):
        gr.Markdown("### Queue")
        p["queue"] = gr.HTML(elem_id="lora_trainer_queue")
        with gr.Row():
            p["queue_id"] = gr.Number(label="Job #", precision=0, elem_id="lora_trainer_queue_id")
            p["queue_cancel"] = gr.Button("Cancel / stop", elem_id="lora_trainer_queue_cancel")
            p["queue_retry"] = gr.Button("Retry / resume", elem_id="lora_trainer_queue_retry")
            p["queue_first"] = gr.Button("Run next", elem_id="lora_trainer_queue_first")
            p["queue_pause"] = gr.Checkbox(label="Pause the queue", elem_id="lora_trainer_queue_pause")
        p["queue_msg"] = gr.HTML(elem_id="lora_trainer_queue_msg")
        p["queue_state"] = gr.State(None)


def wire(ctx: PageContext) -> None:
    p = ctx.parts

    def queue():
        return ctx.service.job_queue().start()

    @guarded(1)
    def on_add(*args: Any) -> List[Any]:
        values, (paused,) = ctx.split(args)
        if paused:  # the box the user sees decides, even if its own change event has not been handled yet
            queue().pause(True)
        job = queue().add("train", raw_from_form(ctx.field_names, values))
        return message_html(f"job {job.id} ({job.name}) added to the queue", "ok")

    def action(name: str):
        @guarded(1)
        def run(job_id: Any) -> Any:
            if job_id is None:
                return message_html("enter the job's number first", "error")
            job = queue().move(int(job_id), 0) if name == "move" else getattr(queue(), name)(int(job_id))
            text = "stopping after the current step; it is saved" if job.stop_requested else job.state
            return message_html(f"job {job.id}: {text}", "ok")
        return run

    @guarded(1)
    def on_pause(paused: bool) -> Any:
        queue().pause(bool(paused))
        return message_html("queue paused: no new job starts" if paused else "queue running", "info")

    def on_poll(previous: Any) -> List[Any]:
        try:
            text = queue_html(queue().snapshot())
        except Exception as exc:  # noqa: BLE001 - a failed refresh must not break the page
            log.warning("refreshing the Queue failed: %s", exc)
            return [compat.no_change(), previous]
        return [compat.no_change(), previous] if text == previous else [text, text]

    p["enqueue"].click(on_add, [*ctx.field_inputs, p["queue_pause"]], [p["run_msg"]])
    p["queue_cancel"].click(action("cancel"), [p["queue_id"]], [p["queue_msg"]])
    p["queue_retry"].click(action("retry"), [p["queue_id"]], [p["queue_msg"]])
    p["queue_first"].click(action("move"), [p["queue_id"]], [p["queue_msg"]])
    p["queue_pause"].change(on_pause, [p["queue_pause"]], [p["queue_msg"]])
    p["poll"].click(on_poll, [p["queue_state"]], [p["queue"], p["queue_state"]], show_progress="hidden")
