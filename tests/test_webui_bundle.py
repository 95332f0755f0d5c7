"""Training the WebUI's in-memory model (a real ldm LatentDiffusion) in place: no copy, same numbers as the
diffusers path on converted weights, and the model comes back exactly as it was."""
from __future__ import annotations

import copy
import os
import threading
import time

import pytest
import torch

from lora_trainer.engine.run import LoraRun, load_model, train
from lora_trainer.events import Callback, StepEnded
from lora_trainer.models.sd1 import SD1Family
from lora_trainer.models.webui_bundle import WebUIBundle
from lora_trainer.tiny import tiny_original_config

from conftest import make_config
from ldm_tiny import build_tiny_ldm, save_single_file


def _peft_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: (p.data_ptr(), p.dtype, p.requires_grad) for n, p in model.named_parameters()},
            {n: m.training for n, m in model.named_modules()})


def _assert_restored(model, snapshot):
    state, params, modes = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    assert {n: (p.data_ptr(), p.dtype, p.requires_grad) for n, p in model.named_parameters()} == params
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert _peft_layers(model) == []
    assert not [n for n, m in model.named_modules() if "forward" in m.__dict__]
    assert not hasattr(model.model.diffusion_model, "peft_config")


@pytest.fixture
def ldm(tmp_path):
    return build_tiny_ldm(tmp_path, seed=0)


def test_names_and_loss_match_the_diffusers_path_on_converted_weights(tmp_path, ldm, color_data):
    path = save_single_file(ldm, tmp_path / "models" / "tiny.safetensors")
    cfg = make_config(path, color_data, tmp_path / "out", tokenizer_path=str(tmp_path / "ldm_tokenizer"),
                      train_text_encoder=True, batch_size=2)
    bundles = [WebUIBundle(ldm, SD1Family(), "tiny"), load_model(cfg)]  # load_model converts with diffusers
    trainers = []
    for i, bundle in enumerate(bundles):
        run = LoraRun(cfg.__class__(**{**cfg.to_dict(), "output_dir": str(tmp_path / f"out{i}")}), bundle=bundle,
                      tensorboard=False)
        trainers.append(run.setup())
    names = [sorted(m.name for m in t.network.modules) for t in trainers]
    assert names[0] == names[1] and len(names[0]) > 20
    assert any(n.startswith("lora_te_text_model_encoder_layers_") for n in names[0])

    # the same (non-zero) LoRA weights in both, by kohya name
    state = trainers[1].network.kohya_state_dict(torch.float32)
    g = torch.Generator().manual_seed(3)
    for key in state:
        if key.endswith("lora_up.weight"):
            state[key] = torch.randn(state[key].shape, generator=g) * 0.2
    for t in trainers:
        t.network.load_kohya_state_dict(state)

    batches = trainers[0].dataset.epoch_batches(0, cfg.seed, cfg.batch_size)
    noise, timesteps = trainers[0].step_noise(0, 0, batches[0])
    with torch.no_grad():
        losses = [float(t.batch_loss(batches[0], noise, timesteps).mean()) for t in trainers]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    steps = [float(t.optimizer_step(0, batches[:1])) for t in trainers]  # one real training step each
    assert steps[0] == pytest.approx(steps[1], abs=1e-5)


def test_training_keeps_every_base_weight_in_place_and_restores_the_model(tmp_path, ldm, color_data):
    snapshot = _snapshot(ldm)
    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "out", max_steps=3, train_text_encoder=True,
                      gradient_checkpointing=True)
    seen = {}

    class Peek(Callback):
        def on_event(self, event):
            if isinstance(event, StepEnded) and event.step == 2:
                seen["ptrs"] = {n: p.data_ptr() for n, p in ldm.named_parameters() if "lora_" not in n}
                seen["lora"] = _peft_layers(ldm)

    result = train(cfg, [Peek()], bundle=WebUIBundle(ldm, SD1Family(), "tiny"))
    assert result.lora_path.is_file()
    base_ptrs = {n.replace(".base_layer", ""): ptr for n, ptr in seen["ptrs"].items()}
    assert base_ptrs == {n: v[0] for n, v in snapshot[1].items()}  # no base weight was copied or moved
    assert seen["lora"]  # LoRA layers were there during training
    _assert_restored(ldm, snapshot)


def test_an_exception_mid_training_restores_the_model(tmp_path, ldm, color_data):
    snapshot = _snapshot(ldm)
    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "out", max_steps=5, train_text_encoder=True)

    class Boom(Callback):
        def on_event(self, event):
            if isinstance(event, StepEnded) and event.step == 2:
                raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError, match="simulated failure"):
        train(cfg, [Boom()], bundle=WebUIBundle(ldm, SD1Family(), "tiny"))
    _assert_restored(ldm, snapshot)


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
    train(cfg, bundle=WebUIBundle(ldm, SD1Family(), "tiny"))  # warm-up: imports, allocator pools
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
              bundle=WebUIBundle(ldm, SD1Family(), "tiny"))
    finally:
        stop.set()
        sampler.join()
    growth = peak[0] - start
    print(f"UNet weights {unet_bytes / 2**20:.1f} MiB, peak RSS growth {growth / 2**20:.1f} MiB")
    assert growth < unet_bytes
