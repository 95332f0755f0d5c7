"""The Results section's tools without gradio: which LoRAs a grid shows, the grid's settings, and the
HTML of what the tools made (grid, resize, merge). `data-*` attributes carry the numbers a test reads."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import LoraTrainerError
from .views import esc, find_result

PICK_FIRST = "pick a LoRA in the list above first (press Refresh when the list is empty)"


def picked_result(items: Sequence[Dict[str, Any]], label: Optional[str]) -> Dict[str, Any]:
    """The LoRA the picker shows, or an error saying to pick one."""
    item = find_result(items, label) if label else None
    if item is None:
        raise LoraTrainerError(PICK_FIRST if not label else f"{label!r} is no longer in the list: press Refresh")
    return item


def grid_rows(service: Any, items: Sequence[Dict[str, Any]], picked: Optional[str],
              chosen: Sequence[str]) -> List[str]:
    """LoRA files of the grid's rows: the chosen LoRAs, or else the picked one's `service.grid_rows`."""
    if chosen:
        return [str(picked_result(items, label)["path"]) for label in chosen]
    return service.grid_rows(str(picked_result(items, picked)["path"]))


def grid_settings(seed: Any, size: Any, steps: Any, cfg: Any) -> Dict[str, Any]:
    """The grid's seed, size, steps and CFG from the page's boxes, checked."""
    try:
        out = dict(seed=int(seed or 0), size=int(size or 0), steps=int(steps or 0),
                   cfg=float(cfg if cfg not in (None, "") else 7.0))
    except (TypeError, ValueError):
        raise LoraTrainerError(f"grid: seed, size and steps must be whole numbers and CFG a number (got seed "
                               f"{seed!r}, size {size!r}, steps {steps!r}, CFG {cfg!r})") from None
    if out["size"] < 64 or out["size"] % 8:
        raise LoraTrainerError(f"grid: size {out['size']} px: use a multiple of 8 from 64 up (512 for SD1.x)")
    if out["steps"] < 1:
        raise LoraTrainerError(f"grid: steps {out['steps']}: use at least 1 (20 is usual)")
    if not math.isfinite(out["cfg"]) or out["cfg"] < 0:
        raise LoraTrainerError(f"grid: CFG scale {out['cfg']}: use a number from 0 up (7 is usual)")
    return out


def grid_html(path: Path, rows: int, columns: int) -> str:
    return (f'<div class="lt-msg lt-msg-ok" data-kind="ok" data-rows="{rows}" data-columns="{columns}" '
            f'data-path="{esc(path)}">grid of {rows} LoRA(s) x {columns} weight(s) written to '
            f'<code>{esc(path)}</code></div>')


def resize_html(result: Any) -> str:
    """The resized file, its overall relative error and the modules it costs most."""
    worst = sorted(result.modules, key=lambda m: m.error, reverse=True)[:5]
    rows = "".join(f"<tr><td>{esc(m.name)}</td><td>{m.rank}</td><td>{m.new_rank}</td><td>{m.error:.2%}</td></tr>"
                   for m in worst)
    return (f'<div class="lt-msg lt-msg-ok" data-kind="ok" data-error="{result.error:.6f}" '
            f'data-path="{esc(result.path)}">{esc(result.summary())}<br>written to <code>{esc(result.path)}</code>'
            f'<table class="lt-table"><thead><tr><th>largest errors</th><th>rank</th><th>new rank</th>'
            f'<th>relative error</th></tr></thead><tbody>{rows}</tbody></table></div>')


def merge_html(result: Any, in_webui: bool) -> str:
    """The merged checkpoint: what went in at which weight, how many weights changed, where it is."""
    where = (f"written to <code>{esc(result.path)}</code>; press the refresh button beside the checkpoint "
             f"dropdown to see it there" if in_webui else f"written to <code>{esc(result.path)}</code>")
    return (f'<div class="lt-msg lt-msg-ok" data-kind="ok" data-changed="{result.weights_changed}" '
            f'data-path="{esc(result.path)}">{esc(result.summary())} ({esc(result.precision)})<br>{where}</div>')
