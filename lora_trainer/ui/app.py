"""The standalone page: `python -m lora_trainer ui [--host 127.0.0.1] [--port 7861]`.

It serves the same Blocks as the WebUI tab with a StandaloneService, and loads the same style.css and
javascript/lora_trainer.js that the WebUI loads for the extension (from the repository root).
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Optional

import gradio as gr

from ..errors import LoraTrainerError
from ..service import StandaloneService, TrainerService
from . import compat
from .page import build_ui

ASSET_ROOT = Path(__file__).resolve().parents[2]  # the repository (= WebUI extension) root
CSS_FILE = ASSET_ROOT / "style.css"
JS_FILE = ASSET_ROOT / "javascript" / "lora_trainer.js"
log = logging.getLogger("lora_trainer")


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        log.warning("%s is missing: the page will look plain and will not refresh the Run section", path)
        return None


def page_js() -> str:
    """javascript/lora_trainer.js as the function the page runs on load (then polling starts)."""
    body = _read(JS_FILE) or ""
    return "() => {\n" + body + "\nif (window.loraTrainerStartPolling) { window.loraTrainerStartPolling(); }\n}"


def create_app(service: Optional[TrainerService] = None) -> tuple:
    """(the Blocks with the queue on, the extra launch() keywords) for the standalone page."""
    css = _read(CSS_FILE)
    demo = build_ui(service or StandaloneService(), css=css, js=page_js())
    compat.enable_queue(demo)
    return demo, compat.launch_kwargs(css)


def check_port_free(host: str, port: int) -> None:
    """Refuse, with the fix, an address this machine does not have or a port another program listens on."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise LoraTrainerError(f"--host {host!r} is not an address this machine can listen on ({exc})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the page's server does
        try:
            probe.bind(address)
        except OSError as exc:
            raise LoraTrainerError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program (or "
                                   f"another page) uses it; choose another port, e.g. --port {port + 1}") from None


def launch(host: str = "127.0.0.1", port: int = 7861, service: Optional[TrainerService] = None,
           block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Serve the page on host:port (localhost by default). With block=False it returns the running app."""
    check_port_free(host, port)
    demo, extra = create_app(service)
    try:
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, inbrowser=False,
                    show_error=True, quiet=quiet, **extra)
    except OSError as exc:
        raise LoraTrainerError(f"the page could not start on {host}:{port}: {exc}") from None
    return demo
