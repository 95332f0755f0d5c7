"""One run owns its output folder: two real training processes into one folder, overwrite and resume
semantics, and property tests of the name and number rules."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_trainer.config import config_from_dict
from lora_trainer.engine.run import train
from lora_trainer.errors import ConfigError
from lora_trainer.utils.names import FORBIDDEN_CHARS, name_problem

from conftest import make_config

ROOT = Path(__file__).resolve().parent.parent


def test_a_second_process_into_a_live_runs_folder_is_refused_at_once(tmp_path, tiny_model_dir, color_data):
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(make_config(tiny_model_dir, color_data, out, max_steps=40, save_steps=20,
                                                 output_name="run").to_dict()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lora_trainer", "train", "--config", str(config)]
    first = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lock = out / ".lora_trainer.lock"
        deadline = time.time() + 120
        while not (lock.is_file() and str(first.pid) in lock.read_text()):
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, "the first run never took the folder"
            time.sleep(0.05)
        started = time.time()
        second = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
        refused_after = time.time() - started
        assert first.poll() is None, "the first run ended before the second was refused: the test proves nothing"
    finally:
        text, _ = first.communicate(timeout=600)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"is in use by another training run (pid {first.pid}: " in second.stderr
    assert "lora_trainer train --config" in second.stderr  # the other process's command line
    assert "Traceback" not in second.stdout + second.stderr
    assert refused_after < 30, refused_after
    assert first.returncode == 0, text

    from safetensors.torch import load_file

    from lora_trainer.formats.kohya import read_metadata

    lora = load_file(str(out / "run.safetensors"))
    assert lora and all(t.isfinite().all() for t in lora.values())
    assert read_metadata(out / "run.safetensors")["ss_steps"] == "40"
    assert sorted(p.name for p in out.iterdir()) == [".lora_trainer.lock", "config.yaml", "logs",
                                                     "run-step00000020.safetensors", "run.json", "run.safetensors",
                                                     "state"]


def test_overwrite_replaces_the_earlier_run_and_never_mixes_its_checkpoints(tmp_path, tiny_model_dir, color_data):
    out = tmp_path / "out"
    train(make_config(tiny_model_dir, color_data, out, max_steps=4, save_steps=1, output_name="run"))
    old = sorted(p.name for p in out.glob("run-step*.safetensors"))
    assert old == [f"run-step0000000{i}.safetensors" for i in (1, 2, 3)]
    train(make_config(tiny_model_dir, color_data, out, max_steps=4, save_steps=4, output_name="run", overwrite=True,
                      lora_rank=2))
    assert not list(out.glob("run-step*.safetensors")), "the earlier run's step checkpoints must be gone"
    from lora_trainer.formats.kohya import read_metadata

    assert read_metadata(out / "run.safetensors")["ss_network_dim"] == "2"
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["overwrite"] is False and os.path.isabs(written["train_data_dir"])


# ---------------------------------------------------------------------------- property tests
@settings(max_examples=120, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_a_name_is_accepted_only_when_it_is_one_plain_file_in_its_folder(name):
    problem = name_problem(name)
    raw = dict(train_data_dir="d", base_model="m", output_dir="/runs/out", output_name=name)
    if problem is None:
        assert os.path.basename(name) == name and not name.startswith(".")
        assert Path("/runs/out", name + ".safetensors").parent == Path("/runs/out")
        assert not any(ord(c) < 32 or ord(c) == 127 or c in FORBIDDEN_CHARS for c in name)
        assert config_from_dict(raw).effective_output_name == name
    else:
        with pytest.raises(ConfigError, match="not a plain file name"):
            config_from_dict(raw)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["learning_rate", "unet_lr", "text_encoder_lr", "lora_alpha", "min_snr_gamma"]),
       st.floats(allow_nan=True, allow_infinity=True))
def test_a_rate_is_accepted_only_when_finite_and_positive(key, value):
    raw = dict(train_data_dir="d", base_model="m", output_dir="o", **{key: value})
    if math.isfinite(value) and value > 0:
        assert getattr(config_from_dict(raw), key) == value
    else:
        with pytest.raises(ConfigError, match=key):
            config_from_dict(raw)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=8, max_value=512).map(lambda r: r * 8))
def test_bucket_limits_follow_the_resolution(resolution):
    config = config_from_dict(dict(train_data_dir="d", base_model="m", output_dir="o", resolution=resolution))
    assert config.min_bucket_reso <= resolution <= config.max_bucket_reso
    if resolution == 512:
        assert (config.min_bucket_reso, config.max_bucket_reso) == (256, 1024)  # kohya's defaults, as before
    assert json.dumps(config.to_dict())  # written as plain numbers in config.yaml


def test_a_second_start_while_a_job_runs_names_the_job_not_a_stranger(tmp_path, tiny_model_dir, color_data):
    """The page's second Start: the running job holds the folder lock, but the answer is 'already running'."""
    import threading

    from lora_trainer.engine.output_folder import FolderLock
    from lora_trainer.jobs import JobBusy, JobManager
    from lora_trainer.service import StandaloneService

    release, holding = threading.Event(), threading.Event()

    def hold_the_folder(config, callbacks):
        with FolderLock(Path(config.output_dir)):
            holding.set()
            release.wait(60)

    service = StandaloneService(str(tmp_path / "runs"), jobs=JobManager(train_fn=hold_the_folder))
    config = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=2, output_name="run")
    service.start(config)
    try:
        assert holding.wait(30)
        with pytest.raises(JobBusy, match="already running"):
            service.start(config)
    finally:
        release.set()
