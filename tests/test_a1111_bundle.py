"""Training the WebUI's in-memory model (a real ldm LatentDiffusion) in place: no copy, same numbers as the
diffusers path on converted weights, and the model comes back exactly as it was."""
from __future__ import annotations

import copy
import os
import threading
import time

import pytest

from lora_trainer.engine.run import load_model, train
from lora_trainer.events import Callback, StepEnded
from lora_trainer.models.sd1 import SD1Family
from lora_trainer.hosts.a1111.bundle import A1111Bundle
from lora_trainer.tiny import tiny_original_config

from conftest import make_config
from ldm_tiny import build_tiny_ldm, save_single_file
from webui_checks import MidRunPeek, assert_restored, same_lora_same_loss, snapshot


@pytest.fixture
def ldm(tmp_path):
    return build_tiny_ldm(tmp_path, seed=0)


def test_names_and_loss_match_the_diffusers_path_on_converted_weights(tmp_path, ldm, color_data):
    path = save_single_file(ldm, tmp_path / "models" / "tiny.safetensors")
    cfg = make_config(path, color_data, tmp_path / "out", tokenizer_path=str(tmp_path / "ldm_tokenizer"),
                      train_text_encoder=True, batch_size=2)
    bundles = [A1111Bundle(ldm, SD1Family(), "tiny"), load_model(cfg)]  # load_model converts with diffusers
    names, losses, steps = same_lora_same_loss(tmp_path, cfg, bundles, ["unet", "te"])
    assert any(n.startswith("lora_te_text_model_encoder_layers_") for n in names)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert steps[0] == pytest.approx(steps[1], abs=1e-5)


def test_training_keeps_every_base_weight_in_place_and_restores_the_model(tmp_path, ldm, color_data):
    saved = snapshot(ldm)
    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "out", max_steps=3, train_text_encoder=True,
                      gradient_checkpointing=True)
    peek = MidRunPeek(ldm)
    result = train(cfg, [peek], bundle=A1111Bundle(ldm, SD1Family(), "tiny"))
    assert result.lora_path.is_file()
    peek.assert_no_base_weight_moved(saved)
    assert peek.lora_layers  # LoRA layers were there during training
    assert_restored(ldm, saved)


def test_an_exception_mid_training_restores_the_model(tmp_path, ldm, color_data):
    saved = snapshot(ldm)
    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "out", max_steps=5, train_text_encoder=True)

    class Boom(Callback):
        def on_event(self, event):
            if isinstance(event, StepEnded) and event.step == 2:
                raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError, match="simulated failure"):
        train(cfg, [Boom()], bundle=A1111Bundle(ldm, SD1Family(), "tiny"))
    assert_restored(ldm, saved)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_peak_memory_growth_is_below_the_unet_size(tmp_path, color_data):
    original = tiny_original_config()
    original["model"]["params"]["unet_config"]["params"].update(model_channels=96, channel_mult=[1, 2, 4],
                                                                 num_res_blocks=2)
    ldm = build_tiny_ldm(tmp_path, seed=0, original=original)
    unet_bytes = sum(p.numel() * p.element_size() for p in ldm.model.diffusion_model.parameters())
    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "warm", max_steps=1, batch_size=1)
    train(cfg, bundle=A1111Bundle(ldm, SD1Family(), "tiny"))  # warm-up: imports, allocator pools
    peak, stop = [_rss_bytes()], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    start = _rss_bytes()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        train(copy.deepcopy(cfg).__class__(**{**cfg.to_dict(), "output_dir": str(tmp_path / "run"), "max_steps": 2}),
              bundle=A1111Bundle(ldm, SD1Family(), "tiny"))
    finally:
        stop.set()
        sampler.join()
    growth = peak[0] - start
    print(f"UNet weights {unet_bytes / 2**20:.1f} MiB, peak RSS growth {growth / 2**20:.1f} MiB")
    assert growth < unet_bytes
