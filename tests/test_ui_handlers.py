"""The page's callbacks as gradio wired them (found through the built Blocks' config, called without a
server): bulk caption edits, captioner buttons, presets, Save config, Start errors, results picking; a
real run's samples and preview; the Results section's Grid, Resize and Merge into checkpoint, standalone
on tiny models and inside a stand-in for the WebUI (fake `modules`, real files)."""
from __future__ import annotations

import re
import sys
import threading
import types
from pathlib import Path
from typing import Any, Dict, List

import pytest

pytest.importorskip("gradio")

from PIL import Image
from safetensors import safe_open

from lora_trainer.service import StandaloneService
from lora_trainer.data.captions import read_metadata_csv
from lora_trainer.errors import DatasetError
from lora_trainer.grid import LABEL_HEIGHT, LABEL_WIDTH
from lora_trainer.jobs import JobManager
from tiny_data import make_color_dataset
from lora_trainer.ui import build_ui

from conftest import make_config


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
    page = Page(StandaloneService(str(tmp_path / "runs")))
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
    class Backend(StandaloneService):
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
    backend = StandaloneService(str(tmp_path / "runs"))
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

    page.fire("lora_trainer_start")  # the model path does not exist: refused before a job starts, saying why
    assert "lt-msg-error" in page.get("lora_trainer_run_msg")
    assert "base_model" in page.get("lora_trainer_run_msg") and "does not exist" in page.get("lora_trainer_run_msg")
    assert backend.jobs.status().state == "idle"


def test_results_pick_shows_prompt_and_path(tmp_path):
    class Backend(StandaloneService):
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



# ---------------------------------------------------------------------------- Results: a real run
SAMPLE = "a red image --w 64 --h 64 --s 2"


def attr(html: str, name: str) -> str:
    found = re.search(rf'data-{name}="([^"]*)"', html or "")
    assert found, f"no data-{name} in {html!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A run started from the page's backend: samples at steps 2 and 4, checkpoints o-step00000002 and o."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_color_dataset(tmp / "data", n=4)
    backend = StandaloneService(str(tmp / "runs"))
    backend.start(make_config(tiny_model_dir, data, tmp / "runs" / "o", max_steps=4, save_steps=2,
                              sample_prompts=[SAMPLE], sample_every_n_steps=2))
    status = backend.jobs.wait(300)
    assert status.state == "finished", status.error
    return backend, tmp / "runs" / "o"


def test_run_shows_the_newest_samples_first_and_results_the_preview(trained):
    backend, run = trained
    page = Page(backend)
    page.fire("lora_trainer_poll")
    assert [label for _, label in page.get("lora_trainer_samples")] == ["step00000004_00.png", "step00000002_00.png"]
    assert page.get("lora_trainer_result_pick") == "o"
    assert "o" in [label for _, label in page.get("lora_trainer_previews")]
    assert (run / "o.preview.png").is_file()


def test_grid_of_a_runs_checkpoints_on_the_page(trained):
    backend, run = trained
    page = Page(backend)
    page.fire("lora_trainer_results_refresh")
    page.set("lora_trainer_grid_prompt", "a red image")
    page.set("lora_trainer_grid_weights", "0.5, 1.0")
    page.set("lora_trainer_grid_size", 64)
    page.set("lora_trainer_grid_steps", 2)
    page.fire("lora_trainer_grid_run")
    msg = page.get("lora_trainer_grid_msg")
    assert (attr(msg, "rows"), attr(msg, "columns")) == ("2", "2"), msg  # o-step00000002 and o x 0.5, 1.0
    png = Path(attr(msg, "path"))
    assert png.parent == run and png.suffix == ".png"
    size = (LABEL_WIDTH + 2 * 64, LABEL_HEIGHT + 2 * 64)
    with Image.open(png) as grid:
        assert grid.size == size and "o-step00000002" in grid.text["lora_trainer_grid"]
    assert page.get("lora_trainer_grid_image").size == size

    page.set("lora_trainer_grid_loras", ["o"])  # chosen rows instead of the run's checkpoints
    page.set("lora_trainer_grid_weights", "1")
    page.fire("lora_trainer_grid_run")
    assert (attr(page.get("lora_trainer_grid_msg"), "rows"), attr(page.get("lora_trainer_grid_msg"), "columns")) \
        == ("1", "1")

    for box, value, said in [("lora_trainer_grid_weights", "0.5,strong", "expected numbers separated by commas"),
                             ("lora_trainer_grid_size", 60, "multiple of 8"),
                             ("lora_trainer_grid_prompt", "", "enter a prompt")]:
        good = page.get(box)
        page.set(box, value)
        page.fire("lora_trainer_grid_run")
        assert "lt-msg-error" in page.get("lora_trainer_grid_msg") and said in page.get("lora_trainer_grid_msg")
        page.set(box, good)


def test_resize_on_the_page_and_merge_needs_a_single_file_base(trained):
    backend, run = trained
    page = Page(backend)
    page.fire("lora_trainer_results_refresh")
    page.set("lora_trainer_resize_rank", 2)
    page.fire("lora_trainer_resize_run")
    msg = page.get("lora_trainer_tools_msg")
    assert "lt-msg-ok" in msg and "relative error" in msg, msg
    assert 0.0 < float(attr(msg, "error")) < 1.0  # rank 4 -> 2 of a trained LoRA loses something
    assert Path(attr(msg, "path")) == run / "o_r2.safetensors"
    assert (run / "o_r2.json").is_file() and (run / "o_r2.preview.png").is_file()
    assert 'data-name="o_r2"' in page.get("lora_trainer_results") and page.get("lora_trainer_result_pick") == "o"

    page.fire("lora_trainer_resize_run")  # the file exists now
    assert "already exists" in page.get("lora_trainer_tools_msg")
    page.set("lora_trainer_tools_overwrite", True)
    page.fire("lora_trainer_resize_run")
    assert "lt-msg-ok" in page.get("lora_trainer_tools_msg")
    page.set("lora_trainer_resize_rank", 0)
    page.fire("lora_trainer_resize_run")
    assert "rank must be at least 1" in page.get("lora_trainer_tools_msg")

    page.fire("lora_trainer_merge_run")  # trained on a diffusers folder: no single file to merge into
    assert "lt-msg-error" in page.get("lora_trainer_tools_msg") and "a diffusers folder" in page.get(
        "lora_trainer_tools_msg")


# ---------------------------------------------------------------------------- merge (single-file base)
@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory):
    """A LoRA `m` trained on a tiny single-file (ldm layout) checkpoint, in runs/m."""
    from ldm_tiny import build_tiny_ldm, save_single_file

    from lora_trainer.engine.run import train

    tmp = tmp_path_factory.mktemp("ldm")
    base = save_single_file(build_tiny_ldm(tmp, seed=0), tmp / "models" / "tiny.safetensors")
    data = make_color_dataset(tmp / "data", n=4)
    train(make_config(base, data, tmp / "runs" / "m", max_steps=2, tokenizer_path=str(tmp / "ldm_tokenizer")))
    return base, tmp / "runs"


def _keys(path: Path) -> set:
    with safe_open(str(path), framework="pt") as fh:
        return set(fh.keys())


def test_merge_into_the_runs_checkpoint(ldm_run):
    base, runs = ldm_run
    page = Page(StandaloneService(str(runs)))
    page.fire("lora_trainer_results_refresh")
    assert page.get("lora_trainer_result_pick") == "m"
    page.fire("lora_trainer_merge_run")
    msg = page.get("lora_trainer_tools_msg")
    assert "lt-msg-ok" in msg and int(attr(msg, "changed")) > 0, msg
    merged = Path(attr(msg, "path"))
    assert merged == runs / "m" / "merged" / "tiny-m.safetensors"
    assert _keys(merged) == _keys(base) and merged.with_suffix(".yaml").is_file()
    page.fire("lora_trainer_results_refresh")
    assert attr(page.get("lora_trainer_results"), "count") == "1"  # the checkpoint is not listed as a LoRA

    page.fire("lora_trainer_merge_run")
    assert "already exists" in page.get("lora_trainer_tools_msg")
    page.set("lora_trainer_merge_name", "../elsewhere")
    page.fire("lora_trainer_merge_run")
    assert "plain file name" in page.get("lora_trainer_tools_msg")

    # a grid on the single-file base: the tokenizer_path comes from the run's config.yaml too
    for box, value in (("lora_trainer_grid_prompt", "a red image"), ("lora_trainer_grid_weights", "1"),
                       ("lora_trainer_grid_size", 64), ("lora_trainer_grid_steps", 2)):
        page.set(box, value)
    page.fire("lora_trainer_grid_run")
    assert (attr(page.get("lora_trainer_grid_msg"), "rows"), attr(page.get("lora_trainer_grid_msg"), "columns")) \
        == ("1", "1"), page.get("lora_trainer_grid_msg")


# ---------------------------------------------------------------------------- the same inside a stand-in WebUI
@pytest.fixture
def fake_webui(monkeypatch, tmp_path, ldm_run):
    """`modules` as the WebUI has them (shared, paths, sd_models, call_queue) around real files: the
    loaded checkpoint is the tiny single file, the Lora folder holds the LoRA `m`."""
    base, runs = ldm_run
    calls: List[str] = []

    def wrap_gradio_gpu_call(func, extra_outputs=None):
        def wrapped(*args):
            calls.append("gpu queue")
            return func(*args)

        return wrapped

    info = types.SimpleNamespace(filename=str(base), title="tiny.safetensors", name_for_extra="tiny")
    names = {
        "modules.shared": dict(sd_model=types.SimpleNamespace(sd_checkpoint_info=info),
                               cmd_opts=types.SimpleNamespace(ckpt_dir=str(tmp_path / "ckpts"),
                                                              lora_dir=str(runs / "m")),
                               opts=types.SimpleNamespace(lora_trainer_workspace=str(tmp_path / "ws"))),
        "modules.paths": dict(models_path=str(tmp_path / "models"), script_path=str(tmp_path)),
        "modules.sd_models": dict(list_models=lambda: calls.append("list_models")),
        "modules.call_queue": dict(wrap_gradio_gpu_call=wrap_gradio_gpu_call),
    }
    root = types.ModuleType("modules")
    monkeypatch.setitem(sys.modules, "modules", root)
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        setattr(root, name.split(".")[1], mod)
        monkeypatch.setitem(sys.modules, name, mod)
    networks = types.SimpleNamespace(networks_in_memory={}, list_available_networks=lambda: calls.append("networks"))
    monkeypatch.setitem(sys.modules, "networks", networks)
    return tmp_path, calls


def test_webui_merge_resize_and_grid(fake_webui, monkeypatch):
    from lora_trainer.hosts.a1111 import sampling
    from lora_trainer.hosts.a1111.host import A1111Host
    from lora_trainer.service import HostedService

    tmp, calls = fake_webui
    prompts: List[str] = []

    def txt2img(prompt, negative, width, height, steps, cfg, seed, sampler="Euler"):
        prompts.append(prompt)
        return Image.new("RGB", (width, height), (len(prompts) * 40, 0, 0))

    monkeypatch.setattr(sampling, "txt2img", txt2img)  # the WebUI's own txt2img is not here
    backend = HostedService(A1111Host())
    page = Page(backend)
    page.fire("lora_trainer_results_refresh")
    assert page.get("lora_trainer_result_pick") == "m"

    page.set("lora_trainer_merge_name", "tiny_with_m")
    page.fire("lora_trainer_merge_run")
    msg = page.get("lora_trainer_tools_msg")
    assert "lt-msg-ok" in msg and "refresh button" in msg, msg
    assert Path(attr(msg, "path")) == tmp / "ckpts" / "tiny_with_m.safetensors"
    assert calls[-2:] == ["gpu queue", "list_models"]

    page.set("lora_trainer_resize_rank", 2)
    page.set("lora_trainer_tools_overwrite", True)
    page.fire("lora_trainer_resize_run")
    assert "lt-msg-ok" in page.get("lora_trainer_tools_msg") and calls[-1] == "networks"

    page.set("lora_trainer_grid_prompt", "a red image")
    page.set("lora_trainer_grid_weights", "0.5,1")
    page.set("lora_trainer_grid_size", 64)
    page.fire("lora_trainer_grid_run")
    msg = page.get("lora_trainer_grid_msg")
    assert (attr(msg, "rows"), attr(msg, "columns")) == ("1", "2"), msg  # the Lora folder has no checkpoints
    assert Path(attr(msg, "path")).parent == tmp / "ws" / "grids" and Path(attr(msg, "path")).is_file()
    assert prompts == ["a red image <lora:m:0.5>", "a red image <lora:m:1>"] and calls[-1] == "gpu queue"

    release = threading.Event()
    backend.jobs = JobManager(train_fn=lambda config, callbacks: release.wait(30))
    backend.jobs.start(make_config(tmp, tmp, tmp / "busy", output_name="busy"))
    try:
        page.fire("lora_trainer_grid_run")
        assert "cannot render a grid while busy is training" in page.get("lora_trainer_grid_msg")
        page.fire("lora_trainer_merge_run")
        assert "cannot merge into a checkpoint while busy" in page.get("lora_trainer_tools_msg")
    finally:
        release.set()
        backend.jobs.wait(30)
