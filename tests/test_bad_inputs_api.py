"""Bad inputs at the page backend and the HTTP API (the routes the WebUI registers, served by FastAPI in
memory with a standalone backend): refused before a job starts, 400 with the message, nothing written
outside the run's folder, no earlier result changed. Also the warnings that let a run go on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import make_config
from bad_inputs_world import W, assert_nothing_else_written, make_world, only_file, tree_hashes


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    return make_world(tmp_path_factory, tiny_model_dir)


# ---------------------------------------------------------------------------- page backend and HTTP API
@dataclass
class ApiCase:
    id: str
    raw: Callable[[W], dict]
    error: str  # exception class name
    said: str


API_CASES = [
    ApiCase("dataset missing", lambda w: w.raw(train_data_dir=str(w.tmp / "none")), "DatasetError", "does not exist"),
    ApiCase("dataset empty", lambda w: w.raw(train_data_dir=str(_empty(w))), "DatasetError", "contains no images"),
    ApiCase("dataset without images", lambda w: w.raw(train_data_dir=str(only_file(w, "notes.txt", b"x"))),
            "DatasetError", "contains no images"),
    ApiCase("dataset not given", lambda w: w.raw(train_data_dir=""), "ConfigError", "missing required key"),
    ApiCase("sub-folder name", lambda w: w.raw(output_dir="", output_name="runs/mine"), "ConfigError",
            "is not a plain file name"),
    ApiCase("escaping name", lambda w: w.raw(output_dir="", output_name="../../etc"), "ConfigError",
            "is not a plain file name"),
    ApiCase("name of an earlier run", lambda w: w.raw(output_dir="", output_name="earlier"), "LoraTrainerError",
            "holds an earlier run"),
    ApiCase("lr nan", lambda w: w.raw(learning_rate="nan"), "ConfigError", "not a finite number"),
    ApiCase("rank text", lambda w: w.raw(lora_rank="big"), "ConfigError", "expected a whole number"),
    ApiCase("model missing", lambda w: w.raw(base_model=str(w.tmp / "none")), "ModelLoadError", "does not exist"),
    ApiCase("unknown key", lambda w: w.raw(lora_rnak=4), "ConfigError", "did you mean 'lora_rank'"),
]


def _empty(w: W) -> Path:
    (w.tmp / "empty").mkdir()
    return w.tmp / "empty"


def _backend(world):
    from lora_trainer.service import StandaloneService

    return StandaloneService(str(world["root"]))  # the earlier run is <root>/earlier


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_backend_refuses_before_a_job_starts(case, world, tmp_path):
    from lora_trainer.errors import LoraTrainerError

    w = W(world, tmp_path)
    backend = _backend(world)
    before = tree_hashes(world["root"], world["model"])
    with pytest.raises(LoraTrainerError) as err:
        backend.start(backend.make_config(case.raw(w)))
    assert type(err.value).__name__ == case.error and case.said in str(err.value)
    assert backend.status().state == "idle"
    assert_nothing_else_written(before, tree_hashes(world["root"], world["model"]), w.out)


def _post(app, path: str, payload: dict):
    """POST through the ASGI app in memory (httpx's transport: works with every fastapi/httpx pair we support)."""
    import asyncio

    import httpx

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://page") as client:
            return await client.post(path, json=payload)

    return asyncio.run(go())


@pytest.mark.parametrize("case", API_CASES[:3] + API_CASES[5:8], ids=lambda c: c.id)
def test_http_api_answers_400_with_the_message(case, world, tmp_path):
    pytest.importorskip("httpx")
    from fastapi import FastAPI

    from lora_trainer.hosts.a1111.api import register_routes
    from lora_trainer.hosts.standalone import StandaloneHost

    app = FastAPI()
    backend = _backend(world)
    register_routes(app, backend, StandaloneHost())
    before = tree_hashes(world["root"], world["model"])
    response = _post(app, "/lora_trainer/v1/train", case.raw(W(world, tmp_path)))
    assert response.status_code == 400, response.text
    assert case.said in response.json()["detail"]
    assert backend.status().state == "idle"
    assert tree_hashes(world["root"], world["model"]) == before


# ---------------------------------------------------------------------------- warnings that let the run go on
def test_a_rank_above_a_layers_width_warns_with_the_effective_rank(world, tmp_path):
    from lora_trainer.engine.run import LoraRun
    from recording import EventRecorder

    from lora_trainer.events import Message

    recorder = EventRecorder()
    run = LoraRun(make_config(world["model"], world["data"], tmp_path / "out", lora_rank=48), [recorder],
                  tensorboard=False)
    try:
        run.setup()
    finally:
        run.close()
    said = [e.text for e in recorder.of_type(Message) if "is larger than the width" in e.text]
    assert said and "lora_rank 48 is larger than the width of" in said[0] and "effective rank is only 32" in said[0]


def test_tight_disk_space_warns_with_the_numbers(world, tmp_path, monkeypatch):
    import shutil

    from lora_trainer.engine.disk_room import base_model_shapes, lora_params, need_bytes
    from lora_trainer.engine.preflight import preflight

    config = make_config(world["model"], world["data"], tmp_path / "out", lora_rank=4000)  # about 1 GB to save
    need = need_bytes(lora_params(base_model_shapes(str(world["model"])), config.lora_rank, False), 4)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=2 * need))
    heard = []
    preflight(config, warn=heard.append)
    assert len(heard) == 1 and "disk space is tight" in heard[0] and "MiB" in heard[0]


def test_disk_estimate_is_close_to_the_real_lora(world):
    """The pre-flight estimate (from the checkpoint's header) against the LoRA a run really wrote."""
    from safetensors.torch import load_file

    from lora_trainer.engine.disk_room import base_model_shapes, lora_params

    real = sum(t.numel() for k, t in load_file(str(world["earlier"] / "earlier.safetensors")).items()
               if not k.endswith(".alpha"))
    assert lora_params(base_model_shapes(str(world["model"])), 4, False) == real
