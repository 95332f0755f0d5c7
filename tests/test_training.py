"""End-to-end training on the tiny SD1 model: learning, kohya output, diffusers loading, determinism."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_trainer.engine.run import LoraRun, train

from conftest import evaluation_loss, make_config
from diffusers_check import assert_diffusers_reproduces, ddim, needs_diffusers_peft, train_and_render

EVAL_TIMESTEPS = [50, 200, 400, 600, 800, 950]


def test_loss_drops_on_learnable_data(tmp_path, tiny_model_dir, color_data):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=150, lora_rank=4, learning_rate=3e-3)
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    images = list(range(len(trainer.dataset)))
    before = evaluation_loss(trainer, images, EVAL_TIMESTEPS)
    run.train()
    after = evaluation_loss(trainer, images, EVAL_TIMESTEPS)
    run.close()
    drop = 1 - after / before
    print(f"evaluation loss {before:.4f} -> {after:.4f} ({drop:.0%} lower)")
    assert drop >= 0.30


def sd_pipeline(unet, vae, text_encoder, tokenizer):
    """An SD1/SD2 pipeline on given modules with a deterministic DDIM scheduler."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=ddim(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@needs_diffusers_peft
@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_saved_lora_loads_in_diffusers_and_reproduces_the_trained_model(tmp_path, tiny_model_dir, color_data,
                                                                        train_text_encoder):
    from diffusers import StableDiffusionPipeline

    cfg = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=30, lora_rank=4, lora_alpha=2,
                      train_text_encoder=train_text_encoder, learning_rate=5e-3)
    path, trained = train_and_render(cfg, lambda b: sd_pipeline(b.unet, b.vae, b.text_encoder, b.tokenizer))
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    assert_diffusers_reproduces(sd_pipeline(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer), path, trained)


def test_files_written_with_kohya_keys_and_metadata(tmp_path, tiny_model_dir, color_data):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=4, save_steps=2, lora_rank=4,
                      lora_alpha=1.5, trigger_word="zzq", save_precision="fp16")
    result = train(cfg)
    out = tmp_path / "out"
    assert result.lora_path == out / "out.safetensors"
    assert (out / "out-step00000002.safetensors").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    with safe_open(str(result.lora_path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
        alpha = f.get_tensor("lora_unet_down_blocks_0_attentions_0_proj_in.alpha")
        down = f.get_tensor("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight")
        up = f.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight")
    assert all(k.startswith("lora_unet_") for k in keys)
    assert {k.split(".", 1)[1] for k in keys} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert alpha.ndim == 0 and float(alpha) == 1.5  # alpha != rank round-trips
    assert down.dtype == torch.float16 and down.shape == (4, 32, 1, 1)  # 1x1 conv: [r, in, 1, 1]
    assert up.shape == (32, 4)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "1.5"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_output_name"] == "out" and meta["ss_steps"] == "4"
    assert len(meta["sshs_model_hash"]) == 64
    assert json.loads(meta["ss_tag_frequency"])["."]["a red image"] == 1
    sidecar = json.loads((out / "out.json").read_text())
    assert sidecar["activation text"] == "zzq" and sidecar["sd version"] == "SD1"
    assert "preferred weight" in sidecar
    assert (out / "config.yaml").is_file()
    assert list((out / "logs").glob("events.out.tfevents.*"))


def test_same_seed_gives_identical_tensors(tmp_path, tiny_model_dir, color_data):
    tensors = []
    for name in ("a", "b"):
        cfg = make_config(tiny_model_dir, color_data, tmp_path / name, max_steps=6, output_name="x")
        tensors.append(load_file(str(train(cfg).lora_path)))
    assert tensors[0].keys() == tensors[1].keys()
    for key in tensors[0]:
        assert torch.equal(tensors[0][key], tensors[1][key]), key
    other = load_file(str(train(make_config(tiny_model_dir, color_data, tmp_path / "c", max_steps=6, seed=1)).lora_path))
    assert any(not torch.equal(other[k], tensors[0][k]) for k in other)
