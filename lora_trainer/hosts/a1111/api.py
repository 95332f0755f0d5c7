"""HTTP routes on the WebUI's FastAPI app: start/stop/status of a training job, and a key check that
proves, from inside the WebUI process, that the built-in Lora loader matched every module of a file."""
from __future__ import annotations

from typing import Any, Dict, Set

from ...errors import LoraTrainerError


def file_module_names(path: str) -> Set[str]:
    from ...formats.kohya import load_kohya_lora, lora_modules

    tensors, _ = load_kohya_lora(path)
    return set(lora_modules(tensors))


def verify_lora(name: str) -> Dict[str, Any]:
    """Load `name` through the WebUI's built-in Lora extension and compare its modules with the file's."""
    import sys

    networks = sys.modules.get("networks")
    if networks is None:
        raise LoraTrainerError("the built-in Lora extension is not loaded")
    networks.list_available_networks()
    on_disk = networks.available_network_aliases.get(name) or networks.available_networks.get(name)
    if on_disk is None:
        raise LoraTrainerError(f"no LoRA named {name!r} in {networks.shared.cmd_opts.lora_dir}")
    try:
        networks.load_networks([name])
        net = next(n for n in networks.loaded_networks if n.name == name)
        matched = {m.network_key.split(".")[0] for m in net.modules.values()}
    finally:
        networks.load_networks([])
    in_file = file_module_names(on_disk.filename)
    model = getattr(getattr(networks, "shared", None), "sd_model", None)
    loaded = "SDXL" if getattr(model, "is_sdxl", False) else "SD2" if getattr(model, "is_sd2", False) else "SD1"
    # the Lora page lists a file only for models of its version (metadata-detected, or the sidecar's "sd version")
    return {"name": name, "file": on_disk.filename, "modules_in_file": len(in_file), "modules_matched": len(matched),
            "unmatched": sorted(in_file - matched), "sd_version": getattr(getattr(on_disk, "sd_version", None), "name", "?"),
            "loaded_model_version": loaded}


def register_routes(app, backend) -> None:
    """Add /lora_trainer/v1/* routes (train, status, stop, verify/{name})."""
    from fastapi import HTTPException

    def guard(fn, *args):
        try:
            return fn(*args)
        except LoraTrainerError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    @app.post("/lora_trainer/v1/train")
    def start_training(config: Dict[str, Any]):
        return guard(lambda: backend.start(backend.make_config(config)).to_dict())

    @app.get("/lora_trainer/v1/status")
    def job_status():
        return backend.status().to_dict()

    @app.post("/lora_trainer/v1/stop")
    def stop_training():
        return backend.stop().to_dict()

    @app.get("/lora_trainer/v1/verify/{name}")
    def verify(name: str):
        from modules.call_queue import queue_lock

        with queue_lock:
            return guard(verify_lora, name)
