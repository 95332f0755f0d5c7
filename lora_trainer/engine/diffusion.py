"""Diffusion arithmetic for training: noising, targets, min-SNR weights. Plain tensors in, tensors out."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError


def _gather(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = values.to(like.device)[timesteps.to(like.device)].float()
    return out.view(-1, *([1] * (like.dim() - 1)))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) * x_0 + sqrt(1 - a_t) * noise (DDPM forward process)."""
    a = _gather(alphas_cumprod, timesteps, latents)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def training_target(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the model must predict: the noise (epsilon) or the velocity v = sqrt(a) n - sqrt(1-a) x_0."""
    if prediction_type == "epsilon":
        return noise.float()
    if prediction_type == "v_prediction":
        a = _gather(alphas_cumprod, timesteps, latents)
        return a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()
    raise ConfigError(f"unknown prediction type {prediction_type!r} (expected epsilon or v_prediction)")


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: Optional[float],
                    prediction_type: str) -> Optional[torch.Tensor]:
    """Per-sample loss weights of Min-SNR (Hang et al. 2023, eq. 6); None when gamma is unset."""
    if not gamma:
        return None
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def make_noise(shape, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise (CPU, from `generator`), plus per-channel offset noise when asked."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device`; to CUDA through pinned memory, so the host does not wait for the GPU."""
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, computed in fp32."""
    return ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.dim())))
