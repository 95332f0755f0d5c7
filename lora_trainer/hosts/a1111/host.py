"""The trainer inside a running WebUI: train `shared.sd_model` through the GPU queue, then put the LoRA
into the Lora folder and refresh the Lora list. Imports `modules.*` only inside functions."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence

from ...service import TrainerService
from ...config import TrainConfig, config_from_dict
from ...errors import ModelLoadError
from ...events import Callback
from ...jobs import JobManager
from ..lora_folder import install_lora
from .progress import WebUIStateProgress

if TYPE_CHECKING:
    from ...tools import MergeResult, ResizeResult

SECTION = ("lora_trainer", "LoRA Trainer")
# key: (default, label[, slider range])
SETTINGS: Dict[str, tuple] = {
    "lora_trainer_workspace": ("", "Folder for training runs (checkpoints, logs, samples); empty: outputs/lora_trainer"),
    "lora_trainer_copy_to_addnet": (False, "Also copy new LoRAs into sd-webui-additional-networks' models/lora folder"),
    "lora_trainer_preferred_weight": (0.8, "Preferred weight written into new LoRAs' cards",
                                      {"minimum": 0.0, "maximum": 2.0, "step": 0.05}),
    "lora_trainer_offload": (False, "Move the VAE (and a frozen text encoder) to the CPU while training"),
    "lora_trainer_overwrite": (False, "Overwrite a LoRA of the same name (off: add -1, -2 ...)"),
}


def opt(key: str) -> Any:
    from modules import shared

    return getattr(shared.opts, key, SETTINGS[key][0])


def webui_root() -> Path:
    from modules import paths

    return Path(paths.script_path)


def lora_dir() -> Path:
    from modules import shared

    return Path(shared.cmd_opts.lora_dir)


def workspace() -> Path:
    return Path(opt("lora_trainer_workspace") or webui_root() / "outputs" / "lora_trainer")


def checkpoint_dir() -> Path:
    """Where the WebUI lists checkpoints: --ckpt-dir, else models/Stable-diffusion (as sd_models does)."""
    from modules import paths, shared

    ckpt_dir = getattr(shared.cmd_opts, "ckpt_dir", None)
    return Path(ckpt_dir) if ckpt_dir else Path(paths.models_path) / "Stable-diffusion"


def loaded_checkpoint() -> Path:
    """The file of the checkpoint loaded in the WebUI."""
    from modules import shared

    info = getattr(shared.sd_model, "sd_checkpoint_info", None) if shared.sd_model is not None else None
    filename = getattr(info, "filename", None)
    if not filename:
        raise ModelLoadError("no checkpoint is loaded in the WebUI: load one in the checkpoint dropdown first")
    return Path(filename)


def _networks():
    """The built-in Lora extension's `networks` module (None when that extension is disabled)."""
    return sys.modules.get("networks")


def clear_active_networks(sd_model) -> None:
    """Deactivate every built-in Lora network and put the original weights back in place right now."""
    networks = _networks()
    if networks is None:
        return
    networks.load_networks([])
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)
    for module in sd_model.modules():
        if isinstance(module, kinds) and hasattr(module, "network_current_names"):
            networks.network_apply_weights(module)


def refresh_networks(name: str) -> None:
    """Re-read the Lora folder and drop any cached copy of `name` so a retrained file is really reloaded."""
    networks = _networks()
    if networks is None:
        return
    networks.networks_in_memory.pop(name, None)
    networks.list_available_networks()


def make_webui_bundle(sd_model, name: str, offload: bool):
    from ...models import default_families

    from .sampling import webui_sampler

    bundle = default_families().webui_bundle(sd_model, name=name, offload=offload)
    if bundle is None:
        raise ModelLoadError(f"the loaded checkpoint ({name}) is of a model family this trainer cannot train yet")
    bundle.sampler = webui_sampler
    return bundle


def train_in_webui(config: TrainConfig, callbacks: Sequence[Callback]):
    """Train the loaded checkpoint, then install the LoRA into the Lora folder (called under the queue lock)."""
    from modules import shared

    from ...engine.run import train

    sd_model = shared.sd_model
    if sd_model is None:
        raise ModelLoadError("no checkpoint is loaded in the WebUI: load one in the checkpoint dropdown first")
    clear_active_networks(sd_model)
    info = getattr(sd_model, "sd_checkpoint_info", None)
    bundle = make_webui_bundle(sd_model, getattr(info, "name_for_extra", None) or getattr(info, "title", "model"),
                               bool(opt("lora_trainer_offload")))
    result = train(config, [WebUIStateProgress(shared.state), *callbacks], bundle=bundle)
    also = [webui_root() / "extensions" / "sd-webui-additional-networks" / "models" / "lora"] \
        if opt("lora_trainer_copy_to_addnet") else []
    installed = install_lora(result.lora_path, lora_dir(), overwrite=bool(opt("lora_trainer_overwrite")),
                             name=config.effective_output_name, also=also)
    refresh_networks(installed.stem)
    return dataclasses.replace(result, lora_path=installed)


def webui_runner(body: Callable[[], Any]) -> Any:
    """Run `body` through the WebUI's GPU queue (queue lock, shared.state.begin/end) and keep its result/error."""
    from modules.call_queue import wrap_gradio_gpu_call

    box: Dict[str, Any] = {}

    def job(*_args):
        try:
            box["result"] = body()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, outside the WebUI's wrapper
            box["error"] = exc
        return [""]

    wrap_gradio_gpu_call(job, extra_outputs=[""])(f"task(lora_trainer_{int(time.time() * 1000)})")
    if "error" in box:
        raise box["error"]
    return box["result"]


class WebUIBackend(TrainerService):
    """The page inside the WebUI: trains the loaded checkpoint; results go to the Lora folder."""

    in_webui = True

    def __init__(self) -> None:
        super().__init__(JobManager(runner=webui_runner, train_fn=train_in_webui))

    def model_description(self) -> str:
        from modules import shared

        info = getattr(shared.sd_model, "sd_checkpoint_info", None) if shared.sd_model is not None else None
        return f"Training uses the loaded checkpoint: {getattr(info, 'title', 'none loaded')}"

    def default_output_dir(self, name: str) -> str:
        return str(workspace() / name)

    def results_folders(self) -> List[Path]:
        return [lora_dir()]

    def run_captioner(self, *args, **kwargs) -> str:
        """Caption through the WebUI's GPU queue, so captioning never overlaps txt2img or training."""
        return webui_runner(lambda: TrainerService.run_captioner(self, *args, **kwargs))

    # ------------------------------------------------------------------ the Results section's tools
    def grid_rows(self, lora_path: str) -> List[str]:
        """The Lora folder holds finished LoRAs only (checkpoints stay in the workspace): the LoRA itself."""
        return [lora_path]

    def grid(self, loras: Sequence[str], prompt: str, weights: Sequence[float], seed: int = 0, size: int = 512,
             steps: int = 20, cfg: float = 7.0, negative: str = "") -> Path:
        """The grid through the WebUI's txt2img (`<lora:name:weight>` in the prompt), saved in
        `<workspace>/grids/`."""
        from ...grid import check_grid_request, new_grid_path, save_grid
        from .sampling import webui_grid

        check_grid_request(loras, prompt, weights)
        self.check_idle("render a grid")
        names = [Path(p).stem for p in loras]
        out = new_grid_path(workspace() / "grids")
        return webui_runner(lambda: save_grid(webui_grid(names, prompt, weights, seed=seed, size=size, steps=steps,
                                                         cfg=cfg, negative=negative), out))

    def resize(self, lora_path: str, rank: int, overwrite: bool = False) -> "ResizeResult":
        result = TrainerService.resize(self, lora_path, rank, overwrite)
        refresh_networks(result.path.stem)
        return result

    def merge_into_checkpoint(self, lora_path: str, weight: float, out_name: str = "",
                              overwrite: bool = False) -> "MergeResult":
        """Into the loaded checkpoint, written to the WebUI's checkpoint folder, whose list is then re-read.
        Through the GPU queue: it reads and writes files of gigabytes."""
        self.check_idle("merge into a checkpoint")

        def body():
            from modules import sd_models

            result = TrainerService.merge_into_checkpoint(self, lora_path, weight, out_name, overwrite)
            sd_models.list_models()
            return result

        return webui_runner(body)

    def merge_base(self, lora: Path) -> Path:
        return loaded_checkpoint()

    def checkpoint_folder(self, lora: Path) -> Path:
        return checkpoint_dir()

    def make_config(self, raw: Dict[str, Any]) -> TrainConfig:
        from modules import shared

        raw = dict(raw)
        info = getattr(shared.sd_model, "sd_checkpoint_info", None) if shared.sd_model is not None else None
        raw["base_model"] = getattr(info, "filename", None) or "webui-loaded-model"
        raw.setdefault("preferred_weight", float(opt("lora_trainer_preferred_weight")))
        if not raw.get("output_dir"):
            raw["output_dir"] = self.default_output_dir(raw.get("output_name") or "my_lora")
        return config_from_dict(raw)


def register_settings() -> None:
    """Add the trainer's section to the WebUI's Settings."""
    from modules import shared

    import gradio as gr

    for key, (default, label, *slider) in SETTINGS.items():
        if slider:
            info = shared.OptionInfo(default, label, gr.Slider, slider[0], section=SECTION)
        else:
            info = shared.OptionInfo(default, label, section=SECTION)
        shared.opts.add_option(key, info)


def describe_missing(exc: BaseException) -> str:
    """One line telling the user what to install when the trainer cannot start."""
    name = getattr(exc, "name", None) or ""
    if isinstance(exc, ImportError) and name.split(".")[0] in ("diffusers", "peft", "transformers", "accelerate"):
        return (f"LoRA Trainer needs {name.split('.')[0]}: restart the WebUI so that the extension's install.py "
                f"runs, or run in the WebUI's venv: pip install diffusers==0.31.0 peft==0.13.2")
    return f"LoRA Trainer cannot start: {type(exc).__name__}: {exc}"

