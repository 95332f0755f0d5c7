"""7. Prompt assistant: collect the user's prompts (their images' generation info, styles.csv, a pasted list),
train a LoRA on a small local language model with them (a server job like training, shown here as it runs),
and expand a short idea into a prompt in their style: copied, or in the WebUI sent to txt2img. The work is
in lora_trainer/text (prompts, assistant); this module only lays it out and wires it."""
import logging
from pathlib import Path
from typing import Any, List, Optional

import gradio as gr

from ...jobs import JobStatus
from ...text.assistant import ASSISTANT_NAME, PromptAssistant, assistant_config, write_training_data
from ...text.prompts import collect_prompts
from ...text.run import train_text
from .. import compat
from ..context import PageContext
from ..views import esc, message_html, status_html
from ..widgets import guarded

JS_SEND = "loraTrainerSetTxt2imgPrompt"  # defined in javascript/lora_trainer.js
SHOWN = 5  # collected prompts shown as a sample
log = logging.getLogger("lora_trainer")


def default_sources(ctx: PageContext) -> tuple:
    """(image folders, styles files) to offer: the host's own (the WebUI's output folders and styles), or
    none (standalone, or a host whose settings do not say: they are only a convenience)."""
    try:
        return ctx.service.prompt_sources()
    except Exception as exc:  # noqa: BLE001 - no defaults; the user types the folders
        log.debug("no default prompt sources: %s", exc)
        return [], []


def assistant_folder(ctx: PageContext) -> Path:
    return Path(ctx.service.default_output_dir(ASSISTANT_NAME))


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    folders, styles = default_sources(ctx)
    with gr.Accordion("7. Prompt assistant: expand a short idea into a prompt in your style", open=False,
                      elem_id="lora_trainer_assistant_box"):
        gr.Markdown("A small language model (a local folder: GPT-2 class, or a Llama/Qwen2-architecture model) "
                    "learns your prompts; then it writes a whole prompt from a few words.")
        with gr.Row():
            p["assistant_folders"] = gr.Textbox("\n".join(folders), label="Image folders (their generation info)",
                                                lines=2, placeholder="one folder per line, e.g. outputs/txt2img-images",
                                                elem_id="lora_trainer_assistant_folders")
            p["assistant_styles"] = gr.Textbox("\n".join(styles), label="styles.csv", lines=2,
                                               elem_id="lora_trainer_assistant_styles")
        p["assistant_pasted"] = gr.Textbox(label="Or paste prompts, one per line", lines=4,
                                           elem_id="lora_trainer_assistant_pasted")
        p["assistant_collect"] = gr.Button("Collect prompts", elem_id="lora_trainer_assistant_collect")
        p["assistant_collect_msg"] = gr.HTML(elem_id="lora_trainer_assistant_collect_msg")
        with gr.Row():
            p["assistant_model"] = gr.Textbox(label="Language model folder", scale=3, lines=1, max_lines=1,
                                              placeholder="e.g. models/gpt2 or models/Qwen2.5-0.5B",
                                              elem_id="lora_trainer_assistant_model")
            p["assistant_steps"] = gr.Number(value=300, precision=0, label="Steps", elem_id="lora_trainer_assistant_steps")
            p["assistant_lr"] = gr.Number(value=2e-4, label="Learning rate", elem_id="lora_trainer_assistant_lr")
        p["assistant_train"] = gr.Button("Train assistant (replaces the last one)", variant="primary",
                                         elem_id="lora_trainer_assistant_train")
        p["assistant_status"] = gr.HTML(assistant_status_html(ctx.service.status(), assistant_folder(ctx)),
                                        elem_id="lora_trainer_assistant_status")
        with gr.Row():
            p["assistant_idea"] = gr.Textbox(label="Idea", scale=3, lines=1, max_lines=1,
                                             placeholder="e.g. red fox in snow", elem_id="lora_trainer_assistant_idea")
            p["assistant_creativity"] = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Creativity",
                                                  info="0: always the most likely prompt",
                                                  elem_id="lora_trainer_assistant_creativity")
            p["assistant_seed"] = gr.Number(value=0, precision=0, label="Seed", elem_id="lora_trainer_assistant_seed")
        p["assistant_expand"] = gr.Button("Expand", variant="primary", elem_id="lora_trainer_assistant_expand")
        p["assistant_msg"] = gr.HTML(elem_id="lora_trainer_assistant_msg")
        with gr.Row():
            p["assistant_result"] = gr.Textbox(label="Prompt", lines=3, interactive=False, scale=4,
                                               elem_id="lora_trainer_assistant_result", **compat.copy_button_kwargs())
            if ctx.service.in_webui:
                p["assistant_send"] = gr.Button("Send to txt2img", scale=1, elem_id="lora_trainer_assistant_send")
    p["assistant"] = PromptAssistant(assistant_folder(ctx))


def assistant_status_html(s: JobStatus, folder: Path) -> str:
    """The assistant's training job as the Run section shows a job; else whether an assistant is trained."""
    if s.name == ASSISTANT_NAME and s.state != "idle":
        return status_html(s)
    if s.active:
        return message_html(f"the server is training {s.name}: train the assistant when it is done", "info")
    trained = (folder / "adapter_model.safetensors").is_file()
    return message_html(f"a trained assistant is in {folder}" if trained else "no assistant trained yet", "info")


def collected_html(summary: str, prompts: List[str], path: Path) -> str:
    sample = "".join(f"<li>{esc(p)}</li>" for p in prompts[:SHOWN])
    return (f'<div class="lt-msg lt-msg-ok" data-kind="ok" data-count="{len(prompts)}">{esc(summary)}; written to '
            f'<code>{esc(path)}</code><ul>{sample}</ul></div>')


def _lines(text: Optional[str]) -> List[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def wire(ctx: PageContext) -> None:
    p = ctx.parts
    folder = assistant_folder(ctx)

    @guarded(1)
    def on_collect(folders: Any, styles: Any, pasted: Any) -> str:
        collected = collect_prompts(_lines(folders), _lines(styles), str(pasted or ""))
        path = write_training_data(collected.prompts, folder)
        return collected_html(collected.summary(), collected.prompts, path)

    @guarded(2, message_at=1)
    def on_train(model: Any, steps: Any, lr: Any) -> List[Any]:
        config = assistant_config(str(model or "").strip(), folder, steps=int(steps or 300),
                                  learning_rate=float(lr or 2e-4))
        p["assistant"].unload()  # its memory goes to the training run
        ctx.service.jobs.refuse_if_busy()
        status = ctx.service.job_queue().run_now(config, kind="text", train_fn=train_text)  # listed in the Queue
        return [assistant_status_html(status, folder), message_html("training the assistant", "info")]

    @guarded(2, message_at=1)
    def on_expand(idea: Any, creativity: Any, seed: Any) -> List[Any]:
        ctx.service.check_idle("expand a prompt")
        text = p["assistant"].expand(str(idea or ""), float(creativity or 0), int(seed or 0))
        if not text:
            return ["", message_html("the assistant wrote nothing: train it longer, or raise Creativity", "error")]
        return [text, ""]

    def on_poll() -> Any:
        try:
            return assistant_status_html(ctx.service.status(), folder)
        except Exception:  # noqa: BLE001 - a failed refresh must not break the page; the next poll retries
            return compat.no_change()

    p["assistant_collect"].click(on_collect, [p["assistant_folders"], p["assistant_styles"], p["assistant_pasted"]],
                                 [p["assistant_collect_msg"]])
    p["assistant_train"].click(on_train, [p["assistant_model"], p["assistant_steps"], p["assistant_lr"]],
                               [p["assistant_status"], p["assistant_msg"]])
    p["assistant_expand"].click(on_expand, [p["assistant_idea"], p["assistant_creativity"], p["assistant_seed"]],
                                [p["assistant_result"], p["assistant_msg"]])
    p["poll"].click(on_poll, None, [p["assistant_status"]], show_progress="hidden")  # the Run section's poll
    if "assistant_send" in p:
        p["assistant_send"].click(None, [p["assistant_result"]], None, **compat.js_kwargs(JS_SEND))
