"""The AUTOMATIC1111 WebUI (v1.10) as a host: train `shared.sd_model` in place through the GPU queue, then
put the LoRA into the Lora folder and re-read the Lora list. `modules.*` is imported inside methods only:
this file imports anywhere, so that detection runs outside the WebUI too."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from ...errors import ModelLoadError
from ..base import Host
from ..lora_folder import install_lora
from . import lora_extension
from .progress import SharedStateProgress
from .settings import SETTINGS

# Forge (and Forge Neo) ship these beside `modules`; A1111 does not.
FORGE_MARKERS = ("modules_forge", "backend")



def importable(name: str) -> bool:
    """Whether top-level module `name` is imported or could be (without importing it)."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _checkpoint_info() -> Any:
    from modules import shared

    return getattr(shared.sd_model, "sd_checkpoint_info", None) if shared.sd_model is not None else None


class A1111Host(Host):
    """The AUTOMATIC1111 WebUI: the model it has loaded, its queue, progress bar and Lora folder."""

    name = "a1111"
    title = "AUTOMATIC1111 WebUI"

    def detect(self) -> bool:
        """The WebUI has imported `modules.shared` before loading extensions; Forge has that too, plus
        `modules_forge` and a top-level `backend` package."""
        return "modules.shared" in sys.modules and not any(importable(name) for name in FORGE_MARKERS)

    def setting(self, key: str) -> Any:
        """The value of one of our settings (SETTINGS) in the WebUI's Settings page."""
        from modules import shared

        return getattr(shared.opts, key, SETTINGS[key][0])

    # ------------------------------------------------------------------ folders
    def root(self) -> Path:
        from modules import paths

        return Path(paths.script_path)

    def lora_dir(self) -> Path:
        from modules import shared

        return Path(shared.cmd_opts.lora_dir)

    def workspace(self) -> Path:
        return Path(self.setting("lora_trainer_workspace") or self.root() / "outputs" / "lora_trainer")

    def output_dir_anywhere(self) -> bool:
        return bool(self.setting("lora_trainer_any_output_dir"))

    def checkpoint_dir(self) -> Path:
        """Where the WebUI lists checkpoints: --ckpt-dir, else models/Stable-diffusion (as sd_models does)."""
        from modules import paths, shared

        ckpt_dir = getattr(shared.cmd_opts, "ckpt_dir", None)
        return Path(ckpt_dir) if ckpt_dir else Path(paths.models_path) / "Stable-diffusion"

    def extra_lora_dirs(self) -> List[Path]:
        """sd-webui-additional-networks' folder, when the setting asks for a copy there."""
        if not self.setting("lora_trainer_copy_to_addnet"):
            return []
        return [self.root() / "extensions" / "sd-webui-additional-networks" / "models" / "lora"]

    # ------------------------------------------------------------------ the loaded model
    def loaded_checkpoint(self) -> Path:
        filename = getattr(_checkpoint_info(), "filename", None)
        if not filename:
            raise ModelLoadError("no checkpoint is loaded in the WebUI: load one in the checkpoint dropdown first")
        return Path(filename)

    def model_description(self) -> str:
        return f"Training uses the loaded checkpoint: {getattr(_checkpoint_info(), 'title', 'none loaded')}"

    def model_digest(self) -> Dict[str, Any]:
        from modules import shared

        from ...utils.weights_digest import weights_digest

        sd_model = shared.sd_model
        if sd_model is None:
            raise ModelLoadError("no checkpoint is loaded in the WebUI: load one in the checkpoint dropdown first")
        return weights_digest({"unet": sd_model.model.diffusion_model, "text_encoders": sd_model.cond_stage_model,
                               "vae": sd_model.first_stage_model})

    def fill_config(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        raw = dict(raw)
        raw["base_model"] = getattr(_checkpoint_info(), "filename", None) or "webui-loaded-model"
        raw.setdefault("preferred_weight", float(self.setting("lora_trainer_preferred_weight")))
        return raw

    def bundle(self):
        """The in-place bundle of `shared.sd_model` (hosts/a1111/layouts), rendering samples by txt2img."""
        from modules import shared

        from .layouts import in_place_bundle  # loads torch and the model code: only when training starts
        from .sampling import webui_sampler

        sd_model = shared.sd_model
        if sd_model is None:
            raise ModelLoadError("no checkpoint is loaded in the WebUI: load one in the checkpoint dropdown first")
        info = getattr(sd_model, "sd_checkpoint_info", None)
        name = getattr(info, "name_for_extra", None) or getattr(info, "title", "model")
        bundle = in_place_bundle(sd_model, name=name, offload=bool(self.setting("lora_trainer_offload")))
        if bundle is None:
            raise ModelLoadError(f"the loaded checkpoint ({name}) is of a model family this trainer cannot train yet")
        bundle.sampler = webui_sampler
        return bundle

    # ------------------------------------------------------------------ jobs
    def run_job(self, body: Callable[[], Any]) -> Any:
        """Run `body` through the WebUI's GPU queue (queue lock, shared.state.begin/end); keep its result/error."""
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

    def train(self, config, callbacks: Sequence[Any]):
        """Train the loaded checkpoint, then install the LoRA into the Lora folder (under the queue lock)."""
        from modules import shared

        from ...engine.run import train

        if shared.sd_model is None:
            raise ModelLoadError("no checkpoint is loaded in the WebUI: load one in the checkpoint dropdown first")
        self.clear_loras()
        result = train(config, [SharedStateProgress(shared.state), *callbacks], bundle=self.bundle())
        installed = install_lora(result.lora_path, self.lora_dir(), overwrite=bool(self.setting("lora_trainer_overwrite")),
                                 name=config.effective_output_name, also=self.extra_lora_dirs())
        self.refresh_loras(installed.stem)
        return dataclasses.replace(result, lora_path=installed)

    # ------------------------------------------------------------------ the Lora list
    def clear_loras(self) -> None:
        from modules import shared

        lora_extension.clear_active_networks(shared.sd_model)

    def refresh_loras(self, name: str) -> None:
        lora_extension.refresh_networks(name)

    def refresh_checkpoints(self) -> None:
        from modules import sd_models

        sd_models.list_models()

    def verify_lora(self, name: str) -> Dict[str, Any]:
        return lora_extension.verify_lora(name)

    def render_grid(self, names: Sequence[str], prompt: str, weights: Sequence[float], seed: int, size: int,
                    steps: int, cfg: float, negative: str):
        from .sampling import webui_grid

        return webui_grid(names, prompt, weights, seed=seed, size=size, steps=steps, cfg=cfg, negative=negative)

    # ------------------------------------------------------------------ the extension
    def register_extension(self) -> None:
        from .extension import register

        register(self)
