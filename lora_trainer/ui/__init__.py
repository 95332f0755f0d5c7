"""The trainer's web page: one gradio Blocks (`build_ui`) for the WebUI tab and the standalone app.

forms, presets, scanning, views and charts are plain functions (no gradio); page, widgets, compat, app
and sections/ build the gradio page, so gradio is imported only when a page is built.
"""
from __future__ import annotations

from typing import Any, Optional

from .context import ROOT_ID


def build_ui(service: Any, css: Optional[str] = None, js: Optional[str] = None) -> Any:
    """The page as a gradio Blocks (see page.build_ui)."""
    from .page import build_ui as build

    return build(service, css=css, js=js)


__all__ = ["ROOT_ID", "build_ui"]
