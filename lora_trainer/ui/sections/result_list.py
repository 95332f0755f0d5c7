"""The list of trained LoRAs that the Results section's parts (and the Run section's poll) share: the
newest LoRAs, and the outputs that show them (table, picker, previews, the grid's row choices)."""
from typing import Any, Dict, List, Optional

from .. import compat
from ..context import PageContext
from ..scanning import thumbnail
from ..views import final_results, result_labels, results_html

SHOWN = 50  # newest LoRAs listed


def listed(ctx: PageContext) -> List[Dict[str, Any]]:
    return final_results(ctx.service.list_results())[:SHOWN]


def result_targets(ctx: PageContext) -> List[Any]:
    """The components `results_outputs` fills, in its order."""
    p = ctx.parts
    return [p["results"], p["result_pick"], p["previews"], p["grid_loras"]]


def results_outputs(ctx: PageContext, keep: Optional[str] = None) -> List[Any]:
    """[results table, LoRA picker, previews, grid rows choices] for the current list; the picker keeps
    `keep` when it is still listed, else shows the newest LoRA."""
    items = listed(ctx)
    labels = result_labels(items)
    previews = []
    for item, label in zip(items, labels):
        img = thumbnail(item["preview"], 256) if item.get("preview") else None
        if img is not None:
            previews.append((img, label))
    pick = keep if keep in labels else (labels[0] if labels else None)
    return [results_html(items, show_paths=not ctx.service.in_webui), compat.update(choices=labels, value=pick),
            previews, compat.update(choices=labels)]
