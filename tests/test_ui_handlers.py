"""The page's callbacks as gradio wired them (found through the built Blocks' config, called without a
server): bulk caption edits, captioner buttons, presets, Save config, Start errors, results picking."""
from __future__ import annotations

import types
from typing import Any, Dict, List

import pytest

pytest.importorskip("gradio")

from lora_trainer.backend import StandaloneBackend  # noqa: E402
from lora_trainer.data.captions import read_metadata_csv  # noqa: E402
from lora_trainer.errors import DatasetError  # noqa: E402
from lora_trainer.tiny import make_color_dataset  # noqa: E402
from lora_trainer.ui import build_ui  # noqa: E402


class Page:
    """Call a built page's event handlers by elem_id, with the components' current values."""

    def __init__(self, backend):
        self.demo = build_ui(backend)
        self.config = self.demo.get_config_file()
        self.ids = {c["props"].get("elem_id"): c["id"] for c in self.config["components"]}
        self.values: Dict[int, Any] = {c["id"]: c["props"].get("value") for c in self.config["components"]}
        for block_id, block in self.demo.blocks.items():  # gr.State keeps its value off the config
            if type(block).__name__ == "State":
                self.values[block_id] = block.value

    def set(self, elem_id: str, value: Any) -> None:
        self.values[self.ids[elem_id]] = value

    def get(self, elem_id: str) -> Any:
        return self.values[self.ids[elem_id]]

    def _handler(self, elem_id: str, event: str):
        target = self.ids[elem_id]
        for index, dep in enumerate(self.config["dependencies"]):
            pairs = [t if isinstance(t, (list, tuple)) else (t, dep.get("trigger")) for t in dep["targets"]]
            if (target, event) in [tuple(p) for p in pairs]:
                fns = self.demo.fns
                return (fns[dep["id"]] if isinstance(fns, dict) else fns[index]).fn, dep["inputs"], dep["outputs"]
        raise KeyError(f"no {event} handler on {elem_id}")

    def fire(self, elem_id: str, event: str = "click", *leading: Any) -> List[Any]:
        """Run the handler and store what it returns as the outputs' values (updates: their 'value')."""
        fn, inputs, outputs = self._handler(elem_id, event)
        result = fn(*leading, *[self.values.get(i) for i in inputs])
        result = list(result) if len(outputs) > 1 else [result]
        for out_id, value in zip(outputs, result):
            if isinstance(value, dict) and str(value.get("__type__", "")).endswith("update"):
                if "value" in value:
                    self.values[out_id] = value["value"]
            else:
                self.values[out_id] = value
        return result


@pytest.fixture
def data(tmp_path):
    return make_color_dataset(tmp_path / "data", n=3, captions="csv")


def test_scan_pick_and_bulk_edits(tmp_path, data):
    page = Page(StandaloneBackend(str(tmp_path / "runs")))
    page.set("lora_trainer_cfg_train_data_dir", str(data))
    page.fire("lora_trainer_scan")
    assert 'data-images="3"' in page.get("lora_trainer_report")
    assert page.get("lora_trainer_image") == "0_red.png" and page.get("lora_trainer_caption") == "a red image"

    page.set("lora_trainer_image", "1_green.png")
    page.fire("lora_trainer_image", "input")
    assert page.get("lora_trainer_caption") == "a green image"
    evt = types.SimpleNamespace(index=2)
    page.fire("lora_trainer_gallery", "select", evt)
    assert page.get("lora_trainer_image") == "2_blue.png" and page.get("lora_trainer_caption") == "a blue image"

    page.set("lora_trainer_bulk_trigger", "sks")
    page.fire("lora_trainer_add_trigger")
    assert "3 caption(s) changed" in page.get("lora_trainer_dataset_msg")
    page.set("lora_trainer_find", "image")
    page.set("lora_trainer_replace", "picture")
    page.fire("lora_trainer_replace_all")
    assert read_metadata_csv(data / "metadata.csv")["1_green.png"] == "sks, a green picture"
    assert page.get("lora_trainer_caption") == "sks, a blue picture"  # the picked image is kept

    page.set("lora_trainer_find", "")
    page.fire("lora_trainer_replace_all")
    assert "enter the text to find" in page.get("lora_trainer_dataset_msg")


def test_captioner_buttons_call_the_backend_and_rescan(tmp_path, data):
    class Backend(StandaloneBackend):
        def captioners(self) -> List[str]:
            return ["tiny-tags"]

        def run_captioner(self, folder, name, prefix="", overwrite=False, progress=None, model=None) -> str:
            if model == "broken":
                raise DatasetError("the tiny-tags model is broken")
            (data / "metadata.csv").write_text("file_name,text\n0_red.png,tagged\n", encoding="utf-8")
            return f"captioned {folder} with {name}, prefix {prefix!r}, overwrite {overwrite}"

    page = Page(Backend(str(tmp_path / "runs")))
    page.set("lora_trainer_cfg_train_data_dir", str(data))
    page.set("lora_trainer_caption_prefix", "sks, ")
    page.set("lora_trainer_caption_overwrite", True)
    page.fire("lora_trainer_caption_tiny_tags")
    assert f"captioned {data} with tiny-tags, prefix &#x27;sks, &#x27;, overwrite True" in page.get(
        "lora_trainer_caption_msg")
    assert page.get("lora_trainer_caption") == "tagged"
    page.set("lora_trainer_caption_model", "broken")
    page.fire("lora_trainer_caption_tiny_tags")
    assert "lt-msg-error" in page.get("lora_trainer_caption_msg")


def test_preset_save_config_and_start_errors(tmp_path, data):
    backend = StandaloneBackend(str(tmp_path / "runs"))
    page = Page(backend)
    page.set("lora_trainer_preset", "character")
    page.fire("lora_trainer_preset", "change")
    assert page.get("lora_trainer_cfg_lora_rank") == 32 and page.get("lora_trainer_cfg_lora_alpha") == "16"

    page.fire("lora_trainer_save_config")  # no dataset folder or model yet
    assert "missing required key(s): train_data_dir, base_model" in page.get("lora_trainer_config_msg")
    page.set("lora_trainer_cfg_train_data_dir", str(data))
    page.set("lora_trainer_cfg_base_model", str(tmp_path / "model"))
    page.set("lora_trainer_cfg_output_name", "mine")
    page.fire("lora_trainer_save_config")
    saved = tmp_path / "runs" / "mine" / "train_config.yaml"
    assert page.get("lora_trainer_config_path") == str(saved.resolve()) and saved.is_file()
    assert page.get("lora_trainer_cli").endswith(f"--config {saved.resolve()}")

    page.fire("lora_trainer_start")  # the model path does not exist: the job fails, the page says why
    assert "started mine" in page.get("lora_trainer_run_msg")
    assert backend.jobs.wait(60).state == "failed"
    page.fire("lora_trainer_poll")
    assert 'data-state="failed"' in page.get("lora_trainer_run_status") and "model" in page.get(
        "lora_trainer_run_status")


def test_results_pick_shows_prompt_and_path(tmp_path):
    class Backend(StandaloneBackend):
        def list_results(self) -> List[Dict[str, Any]]:
            return [{"name": "mine", "path": "/loras/mine.safetensors", "trigger": "sks", "size_mb": 1.0},
                    {"name": "mine-step00000010", "path": "/loras/mine-step00000010.safetensors"}]

    page = Page(Backend(str(tmp_path / "runs")))
    page.fire("lora_trainer_results_refresh")
    assert 'data-count="1"' in page.get("lora_trainer_results")
    assert page.get("lora_trainer_result_pick") == "mine"
    page.set("lora_trainer_weight", 0.6)
    page.fire("lora_trainer_result_pick", "change")
    assert page.get("lora_trainer_prompt") == "sks, <lora:mine:0.6>"
    assert page.get("lora_trainer_result_path") == "/loras/mine.safetensors"

