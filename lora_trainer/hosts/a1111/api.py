"""HTTP routes on the WebUI's FastAPI app: start/stop/status of a training job, and a key check that
proves, from inside the WebUI process, that the built-in Lora loader matched every module of a file."""
from __future__ import annotations

from typing import Any, Dict

from ...errors import LoraTrainerError


def register_routes(app, service, host) -> None:
    """Add /lora_trainer/v1/* routes (train, status, stop, verify/{name}, model_digest) for the page's `service`."""
    from fastapi import HTTPException

    def guard(fn, *args):
        try:
            return fn(*args)
        except LoraTrainerError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    @app.post("/lora_trainer/v1/train")
    def start_training(config: Dict[str, Any]):
        return guard(lambda: service.start(service.make_config(config)).to_dict())

    @app.get("/lora_trainer/v1/status")
    def job_status():
        return service.status().to_dict()

    @app.post("/lora_trainer/v1/stop")
    def stop_training():
        return service.stop().to_dict()

    @app.get("/lora_trainer/v1/model_digest")
    def model_digest():
        from modules.call_queue import queue_lock

        with queue_lock:
            return guard(host.model_digest)

    @app.get("/lora_trainer/v1/verify/{name}")
    def verify(name: str):
        from modules.call_queue import queue_lock

        with queue_lock:
            return guard(host.verify_lora, name)
