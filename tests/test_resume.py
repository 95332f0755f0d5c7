"""Long runs that survive: exact resume after SIGKILL, graceful SIGINT, NaN and out-of-memory faults,
failing writes, continuing from an existing LoRA, and refusing a resume that cannot be exact."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lora_trainer.engine.faults import ScriptedFaults
from lora_trainer.engine.run import LoraRun, train
from lora_trainer.errors import ConfigError, LoraFormatError, LoraTrainerError, TrainingStopped

from conftest import make_config

ROOT = Path(__file__).resolve().parent.parent


def _write_config(path: Path, model, data, out, **over) -> Path:
    raw = make_config(model, data, out, **over).to_dict()
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(config: Path, *extra: str, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lora_trainer", "train", "--config", str(config), *extra]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=600)
        return proc.returncode, out
    return proc


def _wait_for(path: Path, proc, timeout: float = 300) -> None:
    start = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path.name} appeared:\n{proc.stdout.read()}")
        if time.time() - start > timeout:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def _tb_steps(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [e.step for e in acc.Scalars("loss")]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, color_data):
    common = dict(max_steps=40, save_steps=10, output_name="run")
    full = _write_config(tmp_path / "full.yaml", tiny_model_dir, color_data, tmp_path / "full", **common)
    code, out = _cli(full)
    assert code == 0, out

    cfg = _write_config(tmp_path / "cut.yaml", tiny_model_dir, color_data, tmp_path / "cut", **common)
    proc = _cli(cfg, wait=False)
    _wait_for(tmp_path / "cut" / "state" / "training_state.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "run.safetensors").exists()
    code, out = _cli(cfg, "--set", "resume=true")
    assert code == 0, out
    assert "resuming at step" in out

    a, b = load_file(str(tmp_path / "full" / "run.safetensors")), load_file(str(tmp_path / "cut" / "run.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _tb_steps(tmp_path / "cut" / "logs") == list(range(1, 41))


def test_sigint_saves_a_usable_lora_and_state_and_resume_finishes(tmp_path, tiny_model_dir, color_data):
    cfg = _write_config(tmp_path / "c.yaml", tiny_model_dir, color_data, tmp_path / "out", max_steps=400,
                        save_steps=5, output_name="run")
    proc = _cli(cfg, wait=False)
    _wait_for(tmp_path / "out" / "state" / "training_state.pt", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "resume=true" in out
    stopped = load_file(str(tmp_path / "out" / "run.safetensors"))
    assert stopped and all(torch.isfinite(t).all() for t in stopped.values())
    from lora_trainer.formats.kohya import read_metadata

    # a few steps past where it stopped (a loaded machine may deliver the signal many steps late)
    target = int(read_metadata(tmp_path / "out" / "run.safetensors")["ss_steps"]) + 5
    code, out = _cli(cfg, "--set", "resume=true", "--set", f"max_steps={target}")
    assert code == 0, out
    assert read_metadata(tmp_path / "out" / "run.safetensors")["ss_steps"] == str(target)


def _run_with(cfg, faults):
    run = LoraRun(cfg, tensorboard=False)
    run.setup()
    run.trainer.faults = faults
    try:
        run.train()
        run.save_final()
    finally:
        run.close()
    return run


def test_a_nan_step_is_skipped_and_counted(tmp_path, tiny_model_dir, color_data):
    run = _run_with(make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=6), ScriptedFaults(nan_steps={2}))
    assert run.trainer.progress.step == 6 and run.trainer.progress.nonfinite_steps == 1
    assert all(torch.isfinite(t).all() for t in load_file(str(run.lora_path)).values())


def test_repeated_nans_stop_with_advice_and_keep_the_last_checkpoint(tmp_path, tiny_model_dir, color_data):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=20, save_steps=4, max_nonfinite_steps=3)
    checkpoint = tmp_path / "o" / "o-step00000004.safetensors"
    with pytest.raises(TrainingStopped) as err:
        _run_with(cfg, ScriptedFaults(nan_steps=range(5, 20)))
    assert "bf16" in str(err.value) and "learning_rate" in str(err.value)
    assert checkpoint.is_file() and not (tmp_path / "o" / "o.safetensors").exists()
    assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint)).values())


def test_out_of_memory_at_batch_4_finishes_at_micro_batch_2(tmp_path, tiny_model_dir, color_data):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=3, batch_size=4)
    reference = _run_with(cfg, ScriptedFaults())
    faults = ScriptedFaults(oom_at_batch=4)
    run = _run_with(make_config(tiny_model_dir, color_data, tmp_path / "p", max_steps=3, batch_size=4), faults)
    assert faults.ooms == 1 and run.trainer.micro_batch_size == 2
    assert run.trainer.progress.step == 3
    assert run.trainer.progress.samples_seen == reference.trainer.progress.samples_seen == 12


def test_a_failing_write_leaves_the_previous_checkpoint_identical(tmp_path, tiny_model_dir, color_data, monkeypatch):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=2)
    first = train(cfg).lora_path
    before = first.read_bytes()

    import safetensors.torch as st

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", broken_save)
    with pytest.raises(LoraTrainerError, match="No space left on device") as err:
        train(make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=3, resume=True))
    assert "Kept: the training state of step 2 that this run resumed from" in str(err.value)
    assert first.read_bytes() == before
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]


def test_continue_from_an_existing_lora(tmp_path, tiny_model_dir, color_data):
    first = train(make_config(tiny_model_dir, color_data, tmp_path / "a", max_steps=3, lora_rank=6, lora_alpha=3))
    run = LoraRun(make_config(tiny_model_dir, color_data, tmp_path / "b", max_steps=2, init_lora=str(first.lora_path)),
                  tensorboard=False)
    trainer = run.setup()
    assert trainer.network.rank == 6 and trainer.network.alpha == 3
    loaded = trainer.network.kohya_state_dict(torch.float32)
    source = load_file(str(first.lora_path))
    for key, value in source.items():
        assert torch.equal(loaded[key], value.float()), key
    assert trainer.progress.step == 0
    run.close()

    bad = dict(source)
    bad["lora_unet_not_a_module.lora_down.weight"] = torch.zeros(6, 4)
    bad["lora_unet_not_a_module.lora_up.weight"] = torch.zeros(4, 6)
    from safetensors.torch import save_file

    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraFormatError, match="lora_unet_not_a_module"):
        train(make_config(tiny_model_dir, color_data, tmp_path / "c", max_steps=2,
                          init_lora=str(tmp_path / "bad.safetensors")))


def test_resume_refuses_a_changed_rank_with_the_reason(tmp_path, tiny_model_dir, color_data):
    train(make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=4, save_steps=2, lora_rank=4))
    with pytest.raises(ConfigError, match="lora_rank changed from 4 to 8"):
        train(make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=6, lora_rank=8, resume=True))
