"""6. Results, Tools for the picked LoRA: Resize (a new rank by SVD, written beside it, with the error
that costs) and Merge into checkpoint (baked in at the Weight above: standalone into the base model the
run trained on, in the WebUI into the loaded checkpoint, written to its checkpoint folder)."""
from typing import Any, List

import gradio as gr

from ..context import PageContext
from ..widgets import guarded
from ..result_views import merge_html, picked_result, resize_html
from .result_list import listed, result_targets, results_outputs

MERGE_INFO = {
    False: "Bakes the picked LoRA at the Weight above into the single-file checkpoint its run trained on; "
           "written to <run folder>/merged/. Empty: <checkpoint>-<LoRA>.",
    True: "Bakes the picked LoRA at the Weight above into the loaded checkpoint; written to the checkpoint "
          "folder. Empty: <checkpoint>-<LoRA>.",
}


def layout(ctx: PageContext) -> None:
    p = ctx.parts
    with gr.Accordion("Tools: resize, merge into checkpoint", open=False, elem_id="lora_trainer_tools_box"):
        with gr.Row():
            p["resize_rank"] = gr.Number(value=8, precision=0, label="New rank", elem_id="lora_trainer_resize_rank",
                                         info="Writes <name>_r<rank> beside the LoRA and says what it costs.", scale=3)
            p["resize_run"] = gr.Button("Resize", elem_id="lora_trainer_resize_run", scale=1)
        with gr.Row():
            p["merge_name"] = gr.Textbox(label="Checkpoint name", info=MERGE_INFO[bool(ctx.service.in_webui)],
                                         lines=1, max_lines=1, scale=3, elem_id="lora_trainer_merge_name")
            p["merge_run"] = gr.Button("Merge into checkpoint", elem_id="lora_trainer_merge_run", scale=1)
        p["tools_overwrite"] = gr.Checkbox(value=False, label="Overwrite an existing output file",
                                           elem_id="lora_trainer_tools_overwrite")
        p["tools_msg"] = gr.HTML(elem_id="lora_trainer_tools_msg")


def wire(ctx: PageContext) -> None:
    p = ctx.parts
    targets = result_targets(ctx)

    @guarded(1 + len(targets))
    def on_resize(picked: Any, rank: Any, overwrite: Any) -> List[Any]:
        item = picked_result(listed(ctx), picked)
        result = ctx.service.resize(str(item["path"]), int(rank or 0), bool(overwrite))
        return [resize_html(result), *results_outputs(ctx, keep=picked)]

    @guarded(1)
    def on_merge(picked: Any, weight: Any, name: Any, overwrite: Any) -> str:
        item = picked_result(listed(ctx), picked)
        result = ctx.service.merge_into_checkpoint(str(item["path"]), float(weight or 0), str(name or ""),
                                                   bool(overwrite))
        return merge_html(result, bool(ctx.service.in_webui))

    p["resize_run"].click(on_resize, [p["result_pick"], p["resize_rank"], p["tools_overwrite"]],
                          [p["tools_msg"], *targets])
    p["merge_run"].click(on_merge, [p["result_pick"], p["weight"], p["merge_name"], p["tools_overwrite"]],
                         [p["tools_msg"]])
