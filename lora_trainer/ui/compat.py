"""The one place that knows how gradio versions differ (3.41.2 in the WebUI, 4.40 in Forge, current).

- JavaScript on events: `_js=` (3.x) vs `js=` (4+).
- Page CSS: `gr.Blocks(css=)` (3.x, 4.x) vs `launch(css=)` (6+).
- The queue: `queue(concurrency_count=)` (3.x) vs `queue(default_concurrency_limit=)` (4+).
- Textbox copy button: `show_copy_button=True` (3.x-5) vs `buttons=["copy"]` (6+).
- `gr.Box` is gone in 4: layouts use `gr.Group`/`gr.Column` only; `Component.update()` is gone: `gr.update`.
- Periodic refresh: `every=` needs the queue in 3.x and became `gr.Timer` later, so the page does not use
  it: a hidden "poll" button is clicked by a small JS timer (javascript/lora_trainer.js) in every version.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import gradio as gr

GRADIO_VERSION = gr.__version__
GRADIO_MAJOR = int(GRADIO_VERSION.split(".")[0])


def _params(func: Any) -> set:
    try:
        return set(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return set()


def js_kwargs(code: str) -> Dict[str, str]:
    """Keyword for client-side JavaScript on an event listener."""
    return {"_js": code} if GRADIO_MAJOR < 4 else {"js": code}


def copy_button_kwargs() -> Dict[str, Any]:
    """Keyword that gives a Textbox a copy button."""
    params = _params(gr.Textbox.__init__)
    if "show_copy_button" in params:
        return {"show_copy_button": True}
    if "buttons" in params:
        return {"buttons": ["copy"]}
    return {}


def update(**kwargs: Any) -> Any:
    """A property update for any component (`gr.update` exists in every supported version)."""
    return gr.update(**kwargs)


def no_change() -> Any:
    """Leave an output as it is."""
    return gr.update()


def blocks(title: str, css: Optional[str] = None) -> gr.Blocks:
    """A Blocks; `css` is applied here where the constructor takes it (see `launch_kwargs` otherwise)."""
    kwargs: Dict[str, Any] = {"analytics_enabled": False}
    params = _params(gr.Blocks.__init__)
    if "title" in params:
        kwargs["title"] = title
    if css and "css" in params:
        kwargs["css"] = css
    return gr.Blocks(**kwargs)


def launch_kwargs(css: Optional[str] = None) -> Dict[str, Any]:
    """Extra `launch()` keywords: the CSS where launch takes it (gradio 6+)."""
    if css and "css" not in _params(gr.Blocks.__init__) and "css" in _params(gr.Blocks.launch):
        return {"css": css}
    return {}


def enable_queue(demo: gr.Blocks, concurrency: int = 4) -> gr.Blocks:
    """Turn the queue on (needed for long events in 3.x; the default in 4+)."""
    params = _params(demo.queue)
    if "default_concurrency_limit" in params:
        return demo.queue(default_concurrency_limit=concurrency)
    if "concurrency_count" in params:
        return demo.queue(concurrency_count=concurrency)
    return demo.queue()


def on_load_js(demo: gr.Blocks, code: str) -> None:
    """Run `code` (a JS function expression) in the browser when the page loads; call inside `with demo:`."""
    demo.load(None, None, None, **js_kwargs(code))


def select_index(evt: Any) -> Optional[int]:
    """The index a Gallery select event points at (an int, or [row, col] in some versions)."""
    index = getattr(evt, "index", None)
    if isinstance(index, (list, tuple)):
        index = index[0] if index else None
    return index if isinstance(index, int) else None
