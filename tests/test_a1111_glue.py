"""The WebUI glue that can run without a WebUI: progress into a State-like object, the Lora folder,
install.py's rules, and the background job manager."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from lora_trainer.config import config_from_dict
from lora_trainer.events import LossesRead, RunEnded, RunStarted, StepEnded
from lora_trainer.jobs import JobBusy, JobManager
from lora_trainer.hosts.lora_folder import install_lora
from lora_trainer.hosts.a1111.progress import SharedStateProgress

ROOT = Path(__file__).resolve().parent.parent


def test_progress_goes_into_the_webui_state_and_interrupt_stops():
    state = SimpleNamespace(job="", job_count=0, job_no=0, textinfo=None, interrupted=False)
    cb = SharedStateProgress(state)
    cb.on_event(RunStarted(total_steps=50, steps_per_epoch=10, epochs=5, num_images=4))
    assert state.job_count == 50 and state.job == "lora_trainer"
    cb.on_event(StepEnded(step=7, total_steps=50, epoch=1, loss=0.1234, lr=1e-4, steps_per_second=2.0,
                          eta_seconds=21.5, samples_seen=14))
    assert state.job_no == 7 and "7/50" in state.textinfo and "0.1234" in state.textinfo and "0:21" in state.textinfo
    assert not cb.should_stop()
    state.interrupted = True
    assert cb.should_stop()


def test_install_lora_never_overwrites_silently(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "style.safetensors").write_bytes(b"new")
    (run / "style.json").write_text("{}")
    (run / "style.preview.png").write_bytes(b"png")
    loras = tmp_path / "Lora"
    loras.mkdir()
    (loras / "style.safetensors").write_bytes(b"old")
    path = install_lora(run / "style.safetensors", loras, overwrite=False, also=[tmp_path / "addnet"])
    assert path.name == "style-1.safetensors"
    assert (loras / "style.safetensors").read_bytes() == b"old"
    assert (loras / "style-1.json").is_file() and (loras / "style-1.preview.png").is_file()
    assert (tmp_path / "addnet" / "style-1.safetensors").read_bytes() == b"new"
    assert install_lora(run / "style.safetensors", loras, overwrite=True).name == "style.safetensors"
    assert (loras / "style.safetensors").read_bytes() == b"new"


def _install_module():
    spec = importlib.util.spec_from_file_location("lora_trainer_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_py_does_nothing_when_everything_is_present(capsys):
    install = _install_module()
    calls = []
    assert install.install(lambda name: True, lambda *a, **k: calls.append(a)) == []
    assert calls == []
    out = capsys.readouterr().out
    assert "requirements present" in out and len(out.strip().splitlines()) == 2


def test_install_py_pins_every_installed_package(tmp_path):
    install = _install_module()
    versions = install.installed_versions()
    path = install.constraints_file(versions)
    try:
        lines = Path(path).read_text().splitlines()
    finally:
        Path(path).unlink()
    assert "torch==" + versions["torch"] in lines
    assert all("==" in line for line in lines)


def _config(tmp_path):
    return config_from_dict({"train_data_dir": str(tmp_path), "base_model": str(tmp_path), "output_dir": str(tmp_path)})


def test_one_job_at_a_time_stop_and_failure(tmp_path):
    started = threading.Event()

    def fake_train(config, callbacks):
        for cb in callbacks:
            cb.on_event(RunStarted(total_steps=100, steps_per_epoch=10, epochs=10, num_images=3))
        step = 0
        started.set()
        while not any(cb.should_stop() for cb in callbacks):
            step += 1
            for cb in callbacks:
                cb.on_event(LossesRead([(step, 0.5 / step)]))
                cb.on_event(StepEnded(step, 100, 1, 0.5 / step, 1e-4, 10.0, 1.0, step))
            threading.Event().wait(0.01)
        result = SimpleNamespace(lora_path=tmp_path / "x.safetensors", stopped_early=True)
        for cb in callbacks:
            cb.on_event(RunEnded(result.lora_path, step, True))
        return result

    jobs = JobManager(train_fn=fake_train)
    jobs.start(_config(tmp_path))
    assert started.wait(5)
    with pytest.raises(JobBusy):
        jobs.start(_config(tmp_path))
    status = jobs.status()
    assert status.state == "running" and status.total_steps == 100
    jobs.stop()
    final = jobs.wait(5)
    assert final.state == "stopped" and final.lora_path.endswith("x.safetensors") and final.losses

    def failing_train(config, callbacks):
        raise RuntimeError("disk on fire")

    jobs = JobManager(train_fn=failing_train)
    jobs.start(_config(tmp_path))
    failed = jobs.wait(5)
    assert failed.state == "failed" and "disk on fire" in failed.error


def test_a_failed_job_is_logged_to_the_console_too(tmp_path, caplog):
    """Inside a WebUI people read the console first: a failure is logged there, a traceback only for a bug."""
    from lora_trainer.errors import DatasetError

    for exc, traceback_shown in ((DatasetError("no images in the folder"), False), (RuntimeError("bug"), True)):
        def failing_train(config, callbacks, exc=exc):
            raise exc

        caplog.clear()
        jobs = JobManager(train_fn=failing_train)
        jobs.start(_config(tmp_path))
        assert jobs.wait(5).state == "failed"
        [record] = [r for r in caplog.records if r.name == "lora_trainer" and r.levelname == "ERROR"]
        assert str(exc) in record.getMessage() and bool(record.exc_info) == traceback_shown
