"""Shared by the per-family tests: train a tiny model, render with the trained modules, and check that
diffusers' own `load_lora_weights` reading of the saved file reproduces that image."""
from __future__ import annotations

import pytest
import torch

from lora_trainer.engine.run import LoraRun


def diffusers_has_peft_backend() -> bool:
    from diffusers.utils import USE_PEFT_BACKEND

    return bool(USE_PEFT_BACKEND)


needs_diffusers_peft = pytest.mark.skipif(
    not diffusers_has_peft_backend(), reason="diffusers' load_lora_weights needs its peft backend (transformers > 4.33)")


def ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def render(pipe, prompt: str = "a red image") -> torch.Tensor:
    out = pipe(prompt, num_inference_steps=3, guidance_scale=3.0, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(7))
    return torch.from_numpy(out.images[0])


def train_and_render(cfg, pipeline_of):
    """Train `cfg`, save it, and render with the live trained modules: (LoRA path, image)."""
    run = LoraRun(cfg, tensorboard=False)
    run.setup()
    run.train()
    path = run.save_final()
    run.bundle.vae.to("cpu")
    trained = render(pipeline_of(run.bundle))
    run.close()
    return path, trained


def assert_diffusers_reproduces(pipe, path, trained: torch.Tensor) -> None:
    """`pipe` (the base model) changes with the file loaded, and then draws what the trained model drew."""
    base = render(pipe)
    pipe.load_lora_weights(str(path))
    with_lora = render(pipe)
    assert (with_lora - base).abs().max() > 1e-2, "the LoRA does not change the image"
    assert (with_lora - trained).abs().max() < 1e-4, "diffusers' reading of the file differs from the trained model"
