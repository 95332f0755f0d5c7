"""HTTP routes on the WebUI's FastAPI app: start/stop/status of a training job, the persistent job queue
(/jobs), and a key check that proves, from inside the WebUI process, that the built-in Lora loader matched
every module of a file."""
from __future__ import annotations

from typing import Any, Dict

from ...errors import LoraTrainerError


def register_routes(app, service, host) -> None:
    """Add /lora_trainer/v1/* routes (train, status, stop, verify/{name}, model_digest, jobs) for the page's
    `service`. /train is the page's Start: a training run at once as a job of the queue (GET /jobs lists it)."""
    from fastapi import HTTPException

    def guard(fn, *args):
        try:
            return fn(*args)
        except LoraTrainerError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    register_queue_routes(app, lambda: service.job_queue().start(), guard)

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


def register_queue_routes(app, queue, guard) -> None:
    """/lora_trainer/v1/jobs: add (POST {kind, config, name}), list, one job, cancel, retry, move, pause.
    `queue()` gives the running JobQueue (created on first use: a process that never asks writes no file)."""
    from fastapi import Body

    @app.post("/lora_trainer/v1/jobs")
    def add_job(request: Dict[str, Any]):
        return guard(lambda: queue().add(str(request.get("kind", "train")), request.get("config") or {},
                                       str(request.get("name") or "")).to_dict())

    @app.get("/lora_trainer/v1/jobs")
    def list_jobs():
        return queue().snapshot()

    @app.get("/lora_trainer/v1/jobs/{job_id}")
    def get_job(job_id: int):
        return guard(lambda: queue().get(job_id).to_dict())

    @app.post("/lora_trainer/v1/jobs/{job_id}/cancel")
    def cancel_job(job_id: int):
        return guard(lambda: queue().cancel(job_id).to_dict())

    @app.post("/lora_trainer/v1/jobs/{job_id}/retry")
    def retry_job(job_id: int):
        return guard(lambda: queue().retry(job_id).to_dict())

    @app.post("/lora_trainer/v1/jobs/{job_id}/move")
    def move_job(job_id: int, index: int = Body(..., embed=True)):
        return guard(lambda: queue().move(job_id, index).to_dict())

    @app.post("/lora_trainer/v1/queue/pause")
    def pause_queue(paused: bool = Body(True, embed=True)):
        return {"paused": queue().pause(paused)}
