"""5. Run: Start, "Stop and save", and the live view of the server's job (step / total, it/s, ETA, the loss
curve, the newest samples, the log). The job lives on the server: a hidden "poll" button, clicked by
javascript/lora_trainer.js every second or so, refreshes this view, so a reloaded or second page shows the
running job too."""
import logging
from typing import Any, List, Optional, Tuple

import gradio as gr

from ...jobs import JobStatus
from .. import compat
from ..charts import loss_svg
from ..forms import make_config
from ..context import PageContext
from ..widgets import guarded
from ..scanning import thumbnail
from ..views import log_text, message_html, status_html
from .result_list import result_targets, results_outputs

SAMPLES_SHOWN = 4
log = logging.getLogger("lora_trainer")


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    with gr.Column(elem_id="lora_trainer_run", elem_classes=["lt-section"]):
        gr.Markdown("### 5. Run")
        with gr.Row():
            p["start"] = gr.Button("Start training", variant="primary", elem_id="lora_trainer_start")
            p["stop"] = gr.Button("Stop and save", variant="stop", elem_id="lora_trainer_stop")
            p["enqueue"] = gr.Button("Add to queue", elem_id="lora_trainer_enqueue")  # wired in sections/queue.py
        p["run_msg"] = gr.HTML(elem_id="lora_trainer_run_msg")
        p["status"] = gr.HTML(status_html(ctx.service.status()), elem_id="lora_trainer_run_status")
        p["loss"] = gr.HTML(loss_svg([]), elem_id="lora_trainer_loss")
        p["samples"] = gr.Gallery(label="Newest samples", columns=4, height=220, object_fit="contain",
                                  elem_id="lora_trainer_samples")
        p["log"] = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False, elem_id="lora_trainer_log")
        # Clicked by javascript/lora_trainer.js; hidden by style.css (a visible=False button is not in the
        # page in newer gradio, so it could not be clicked).
        p["poll"] = gr.Button("poll", elem_id="lora_trainer_poll", elem_classes=["lt-hidden"])
        p["poll_state"] = gr.State(None)


def signature(s: JobStatus) -> Tuple[Any, ...]:
    """What the page shows of a status; an unchanged signature means nothing to send."""
    return (s.state, s.step, len(s.losses), len(s.samples), len(s.messages), s.finished_at, s.lora_path, s.error)


def sample_items(s: JobStatus) -> List[Tuple[Any, str]]:
    items = []
    for path in s.samples[:SAMPLES_SHOWN]:
        img = thumbnail(path, 384)
        if img is not None:
            items.append((img, path.rsplit("/", 1)[-1]))
    return items


def poll_outputs(ctx: PageContext, previous: Optional[Tuple[Any, ...]]) -> List[Any]:
    """[status, loss, samples, log, *results (see result_targets), signature]: only what changed since
    `previous` (a run that ended lists its LoRA, picked)."""
    s = ctx.service.status()
    sig = signature(s)
    keep = compat.no_change()
    n_results = len(result_targets(ctx))
    if previous is not None and tuple(previous) == sig:
        return [keep] * (4 + n_results) + [previous]
    prev = tuple(previous) if previous is not None else (None,) * len(sig)
    samples = sample_items(s) if prev[3] != sig[3] else keep
    results = results_outputs(ctx) if (prev[0], prev[5]) != (sig[0], sig[5]) else [keep] * n_results
    return [status_html(s), loss_svg(s.losses), samples, log_text(s), *results, list(sig)]


def wire(ctx: PageContext) -> None:
    p = ctx.parts

    @guarded(2)
    def on_start(*values: Any) -> List[Any]:
        config = make_config(ctx.service, ctx.field_names, list(values))
        status = ctx.service.start(config)
        return [message_html(f"started {status.name}; the LoRA goes to {config.output_dir}", "ok"),
                status_html(status)]

    @guarded(2)
    def on_stop() -> List[Any]:
        status = ctx.service.stop()
        text = "stopping after the current step; the LoRA is saved" if status.active else "no job is running"
        return [message_html(text, "info"), status_html(status)]

    targets = result_targets(ctx)

    def on_poll(previous: Any) -> List[Any]:
        try:
            return poll_outputs(ctx, previous)
        except Exception as exc:  # noqa: BLE001 - a failed refresh must not break the page; the next poll retries
            log.warning("refreshing the Run section failed: %s", exc)
            return [compat.no_change()] * (4 + len(targets)) + [None]

    p["start"].click(on_start, ctx.field_inputs, [p["run_msg"], p["status"]])
    p["stop"].click(on_stop, None, [p["run_msg"], p["status"]])
    p["poll"].click(on_poll, [p["poll_state"]],
                    [p["status"], p["loss"], p["samples"], p["log"], *targets, p["poll_state"]],
                    show_progress="hidden")
