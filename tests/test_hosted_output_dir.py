"""Inside a WebUI (which may listen on a network) a page or API request cannot make the trainer write a run
anywhere on the server's disk: output_dir must lie inside the workspace unless a setting allows any."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lora_trainer.errors import ConfigError
from lora_trainer.hosts.standalone import StandaloneHost
from lora_trainer.service import HostedService


class StandInHost(StandaloneHost):
    """Stand-in for a WebUI host: a workspace folder and the 'any output folder' setting, nothing else."""

    name, title, in_webui = "stand-in", "stand-in WebUI", True

    def __init__(self, workspace: Path, anywhere: bool = False):
        super().__init__(str(workspace))
        self.anywhere = anywhere

    def output_dir_anywhere(self) -> bool:
        return self.anywhere


def _raw(tmp_path: Path, output_dir: str) -> dict:
    return {"train_data_dir": str(tmp_path), "output_dir": output_dir, "output_name": "style", "base_model": "x"}


@pytest.mark.parametrize("output_dir", ["/etc/cron.d", "../outside", "runs/../../outside", "~/lora"])
def test_an_output_dir_outside_the_workspace_is_refused(tmp_path, output_dir):
    service = HostedService(StandInHost(tmp_path / "ws"))
    with pytest.raises(ConfigError, match="outside the trainer's folder for runs"):
        service.make_config(_raw(tmp_path, output_dir))
    assert not (tmp_path / "outside").exists()


def test_a_link_out_of_the_workspace_is_refused(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="outside"):
        HostedService(StandInHost(tmp_path / "ws")).make_config(_raw(tmp_path, "link/run"))


def test_inside_the_workspace_or_when_allowed(tmp_path):
    ws = tmp_path / "ws"
    inside = HostedService(StandInHost(ws)).make_config(_raw(tmp_path, "runs/style"))
    assert Path(inside.output_dir) == ws / "runs" / "style"  # relative: inside the workspace, not the cwd
    assert Path(HostedService(StandInHost(ws)).make_config(_raw(tmp_path, str(ws / "a"))).output_dir) == ws / "a"
    allowed = HostedService(StandInHost(ws, anywhere=True)).make_config(_raw(tmp_path, str(tmp_path / "other")))
    assert Path(allowed.output_dir) == tmp_path / "other"


def test_the_http_api_answers_400(tmp_path):
    pytest.importorskip("httpx")
    import httpx
    from fastapi import FastAPI

    from lora_trainer.hosts.a1111.api import register_routes

    app = FastAPI()
    service = HostedService(StandInHost(tmp_path / "ws"))
    register_routes(app, service, service.host)

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webui") as client:
            return await client.post("/lora_trainer/v1/train", json=_raw(tmp_path, "/tmp/anywhere"))

    response = asyncio.run(post())
    assert response.status_code == 400 and "outside the trainer's folder" in response.json()["detail"]
    assert service.status().state == "idle"


def test_save_config_writes_only_inside_the_workspace(tmp_path):
    from lora_trainer.ui.forms import save_config_file

    service = HostedService(StandInHost(tmp_path / "ws"))
    raw = _raw(tmp_path, "")
    names, values = list(raw), list(raw.values())
    with pytest.raises(ConfigError, match="config file: .* is outside the trainer's folder"):
        save_config_file(service, names, values, str(tmp_path / "elsewhere.yaml"))
    assert not (tmp_path / "elsewhere.yaml").exists()
    target, _ = save_config_file(service, names, values, "")
    assert target == (tmp_path / "ws" / "style" / "train_config.yaml").resolve() and target.is_file()
