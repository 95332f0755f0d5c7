"""Forge Neo as a host: the same extension folder, tab, settings and routes as in A1111 (Forge keeps
`modules.shared`, `modules.call_queue` and `script_callbacks`), with what differs overridden: the loaded
model is a `ForgeDiffusionEngine` trained in place by `ForgeBundle` (loaded through Forge's own path when
it is not loaded yet), jobs run on Forge's main thread (where its generations run) inside the GPU queue,
and the LoRA list and loader are Forge's (lora_loader.py). `modules.*` and Forge's `backend.*` are
imported inside methods only, so this file imports anywhere and detection runs outside Forge too.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ...errors import ModelLoadError
from ..a1111.host import A1111Host, importable
from . import lora_loader

NOT_LOADED = "no checkpoint is loaded in Forge: select one in the checkpoint dropdown first"


def forge_weights(layer: Any, x: Any) -> Tuple[Any, Optional[Any]]:
    """A layer's weight and bias for input `x`, exactly as Forge's operations fetch them per call (cast to the
    input's dtype and device when the layer casts manually; its weight functions applied)."""
    from backend.operations import get_weight_and_bias, weights_manual_cast

    if getattr(layer, "parameters_manual_cast", False) and hasattr(layer, "weight_function"):
        weight, bias, _ = weights_manual_cast(layer, x)
        return weight, bias
    return get_weight_and_bias(layer)


class ForgeNeoHost(A1111Host):
    """Forge Neo (sd-webui-forge-classic, branch neo): SD1.5 and SDXL trained in place."""

    name = "forge_neo"
    title = "Forge Neo"

    def detect(self) -> bool:
        """Forge imports `modules.shared` before extensions load, and ships `modules_forge` and `backend`."""
        return "modules.shared" in sys.modules and importable("modules_forge") and importable("backend")

    # ------------------------------------------------------------------ the loaded model
    def loaded_model(self) -> Any:
        """Forge's loaded model; loaded now through Forge's own path (`forge_model_reload`) if it is lazy."""
        from modules import sd_models, shared

        if getattr(shared.sd_model, "forge_objects", None) is None:
            try:
                sd_models.forge_model_reload()
            except Exception as exc:  # noqa: BLE001 - Forge says ValueError("Failed to find available model...")
                raise ModelLoadError(f"{NOT_LOADED} ({exc})") from None
        sd_model = shared.sd_model
        if getattr(sd_model, "forge_objects", None) is None:
            raise ModelLoadError(NOT_LOADED)
        return sd_model

    def model_digest(self) -> Dict[str, Any]:
        from ...utils.weights_digest import weights_digest

        objects = self.loaded_model().forge_objects
        return weights_digest({"unet": objects.unet.model.diffusion_model, "text_encoders": objects.clip.cond_stage_model,
                               "vae": objects.vae.first_stage_model})

    def bundle(self):
        """The in-place bundle of Forge's SD1.5 / SDXL model (hosts/forge_neo/bundle.py), samples by txt2img."""
        from ...models import default_families
        from ..a1111.sampling import webui_sampler
        from .bundle import ForgeBundle
        from .sdxl_bundle import ForgeSDXLBundle

        sd_model = self.loaded_model()
        info = getattr(sd_model, "sd_checkpoint_info", None)
        name = getattr(info, "name_for_extra", None) or getattr(info, "title", "model")
        if getattr(sd_model, "is_sdxl", False) and hasattr(sd_model, "text_processing_engine_l"):
            cls, family = ForgeSDXLBundle, "sdxl"
        elif getattr(sd_model, "is_sd1", False):
            cls, family = ForgeBundle, "sd1"
        else:
            raise ModelLoadError(f"the loaded checkpoint ({name}, {type(sd_model).__name__}) cannot be trained in "
                                 f"Forge yet: SD1.5 and SDXL base models only")
        bundle = cls(sd_model, default_families().get(family), name=name, fetch=forge_weights)
        bundle.sampler = webui_sampler
        return bundle

    # ------------------------------------------------------------------ jobs
    def run_job(self, body: Callable[[], Any]) -> Any:
        """Run `body` on Forge's main thread (where txt2img runs) inside the GPU queue; keep its result/error."""
        from modules.call_queue import wrap_gradio_gpu_call
        from modules_forge import main_thread

        box: Dict[str, Any] = {}

        def on_main_thread():
            try:
                box["result"] = body()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, outside Forge's wrappers
                box["error"] = exc

        def job(*_args):
            main_thread.run_and_wait_result(on_main_thread)
            return [""]

        wrap_gradio_gpu_call(job, extra_outputs=[""])(f"task(lora_trainer_{int(time.time() * 1000)})")
        if "error" in box:
            raise box["error"]
        return box["result"]

    # ------------------------------------------------------------------ the Lora list
    def clear_loras(self) -> None:
        lora_loader.clear_active_loras(self.loaded_model())

    def refresh_loras(self, name: str) -> None:
        lora_loader.refresh_loras()

    def verify_lora(self, name: str) -> Dict[str, Any]:
        return lora_loader.verify_lora(name, self.loaded_model())
