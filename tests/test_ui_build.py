"""The page module imports and builds its Blocks under the installed gradio (CI runs this file under
gradio 3.41.2, the WebUI's pin, and under the current release), standalone and as the WebUI tab."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict

import pytest

gr = pytest.importorskip("gradio")

from lora_trainer.service import StandaloneService, TrainerService  # noqa: E402
from lora_trainer.config import config_from_dict  # noqa: E402
from lora_trainer.ui import ROOT_ID, build_ui  # noqa: E402
from lora_trainer.ui.app import CSS_FILE, JS_FILE, create_app, page_js  # noqa: E402
from lora_trainer.ui.forms import form_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class FakeHostedService(TrainerService):
    """What the page sees inside the WebUI (no WebUI needed): a loaded checkpoint, captioners."""

    in_webui = True

    def model_description(self) -> str:
        return "Training uses the loaded checkpoint: tiny.safetensors"

    def captioners(self):
        return ["blip", "clip-tags"]

    def make_config(self, raw: Dict[str, Any]):
        return config_from_dict({**raw, "base_model": "tiny.safetensors", "output_dir": raw.get("output_dir") or "x"})


def _elem_ids(demo) -> set:
    return {c["props"].get("elem_id") for c in demo.get_config_file()["components"]} - {None}


RESULT_TOOLS = ("grid_loras", "grid_prompt", "grid_weights", "grid_run", "grid_msg", "grid_image", "resize_rank",
                "resize_run", "merge_name", "merge_run", "tools_overwrite", "tools_msg")


def test_standalone_page_builds_with_every_config_key(tmp_path):
    backend = StandaloneService(str(tmp_path))
    demo = build_ui(backend)
    ids = _elem_ids(demo)
    assert ROOT_ID in ids
    for key in form_keys():
        assert f"lora_trainer_cfg_{key}" in ids, key
    for part in ("scan", "report", "gallery", "caption", "save_caption", "add_trigger", "replace_all", "preset",
                 "advanced", "save_config", "load_config", "cli", "start", "stop", "run_status", "loss", "samples",
                 "poll", "results", "result_path") + RESULT_TOOLS:
        assert f"lora_trainer_{part}" in ids, part
    # one button per captioner that can run here; a note where none can
    captioners = backend.captioners()
    assert ("lora_trainer_captions_missing" in ids) == (not captioners)
    assert all(f"lora_trainer_caption_{name.replace('+', '_').replace('-', '_')}" in ids for name in captioners)
    assert "lora_trainer_send" not in ids  # standalone shows the file path instead


def test_webui_page_builds_with_model_name_captioners_and_send_button():
    demo = build_ui(FakeHostedService())
    ids = _elem_ids(demo)
    assert {"lora_trainer_send", "lora_trainer_model_info", "lora_trainer_caption_blip",
            "lora_trainer_caption_clip_tags"} <= ids
    assert {f"lora_trainer_{part}" for part in RESULT_TOOLS} <= ids
    assert "lora_trainer_cfg_base_model" not in ids  # the loaded checkpoint is used
    assert "lora_trainer_result_path" not in ids
    config = demo.get_config_file()
    model_info = next(c for c in config["components"] if c["props"].get("elem_id") == "lora_trainer_model_info")
    assert "tiny.safetensors" in model_info["props"]["value"]
    send_js = [d.get("js") for d in config["dependencies"] if d.get("js")]
    assert "loraTrainerSendToTxt2img" in send_js


def test_standalone_app_has_the_css_and_the_polling_script(tmp_path):
    demo, launch_kwargs = create_app(StandaloneService(str(tmp_path)))
    config = demo.get_config_file()
    css = config.get("css") or launch_kwargs.get("css") or ""
    assert "#lora_trainer_poll" in css
    assert any("loraTrainerStartPolling" in (d.get("js") or "") for d in config["dependencies"])
    assert config.get("enable_queue", True)


def test_css_is_scoped_to_the_page_and_js_defines_what_the_page_calls():
    css = CSS_FILE.read_text(encoding="utf-8")
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    selectors = [s.strip() for block in re.findall(r"([^{}]+)\{", css) for s in block.split(",")]
    assert selectors
    unscoped = [s for s in selectors if not s.startswith(f"#{ROOT_ID} ")]
    assert not unscoped, f"CSS rules that would restyle the rest of the WebUI: {unscoped}"
    js = JS_FILE.read_text(encoding="utf-8")
    for name in ("window.loraTrainerStartPolling", "window.loraTrainerSendToTxt2img", "#lora_trainer_poll",
                 "#txt2img_prompt textarea", "switch_to_txt2img", "onUiLoaded"):
        assert name in js
    assert page_js().startswith("() => {")
    assert CSS_FILE == ROOT / "style.css" and JS_FILE == ROOT / "javascript" / "lora_trainer.js"


def _non_loopback_ip() -> str:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent; this only picks the outgoing interface
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_cli_ui_serves_the_page_on_localhost_only(tmp_path):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lora_trainer", "ui", "--port", str(port), "--output-root",
                             str(tmp_path / "runs")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, body = time.monotonic() + 120, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode("utf-8", "replace")
        assert "<html" in body.lower()
        other = _non_loopback_ip()
        if not other.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(30)
