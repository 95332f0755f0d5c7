"""Shared fixtures: a tiny random SD1-shaped diffusers model and small generated image sets."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lora_trainer.tiny import build_tiny_sd1

    return build_tiny_sd1(tmp_path_factory.mktemp("models") / "tiny-sd1", seed=0)


@pytest.fixture
def color_data(tmp_path) -> Path:
    from tiny_data import make_color_dataset

    return make_color_dataset(tmp_path / "data", n=4)


def make_config(model: Path, data: Path, out: Path, **overrides):
    """A small CPU training config for the tiny model. fp32, so outputs can be compared with fp32 references
    exactly (`auto` would pick bf16 on a CPU with AMX; the bf16 paths have tests of their own)."""
    from lora_trainer.config import config_from_dict

    raw = dict(train_data_dir=str(data), base_model=str(model), output_dir=str(out), resolution=64,
               min_bucket_reso=64, max_bucket_reso=128, lora_rank=4, batch_size=2, max_steps=10,
               learning_rate=1e-3, seed=0, device="cpu", mixed_precision="no", save_precision="fp32")
    raw.update(overrides)
    return config_from_dict(raw)


@contextmanager
def trainer_of(cfg):
    """A set-up run's trainer (no TensorBoard); the run is closed afterwards."""
    from lora_trainer.engine.run import LoraRun

    run = LoraRun(cfg, tensorboard=False)
    try:
        yield run.setup()
    finally:
        run.close()


def first_batch_loss_and_grads(trainer):
    """Loss of the trainer's first batch of two at fixed noise and timesteps, and the LoRA gradients it gives."""
    samples = trainer.dataset.epoch_batches(0, 0, 2)[0]
    noise, timesteps = trainer.step_noise(0, 0, samples)
    loss = trainer.batch_loss(samples, noise, timesteps).mean()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in trainer.network.parameters()]


def assert_same_loss_and_grads(got, expected, rel: float = 1e-5) -> None:
    """Two `first_batch_loss_and_grads` results agree: the loss and each gradient to `rel` (relative)."""
    import torch

    assert got[0] == pytest.approx(expected[0], rel=rel)
    assert len(got[1]) == len(expected[1])
    for grad, reference in zip(got[1], expected[1]):
        assert torch.linalg.vector_norm(grad - reference) <= rel * torch.linalg.vector_norm(reference) + 1e-12


def evaluation_loss(trainer, indices, timesteps, seed: int = 0) -> float:
    """Loss of the trainer's current weights on some of its training images at fixed timesteps and noise
    (deterministic): the product's Validator on a subset."""
    from lora_trainer.engine.validation import Validator

    return Validator(trainer, trainer.dataset.subset(indices), timesteps, seed).loss()
