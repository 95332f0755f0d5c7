"""The contract between the engine and a loaded model: `ModelBundle`.

The engine knows nothing of diffusers, ldm or the WebUI; it drives a bundle through these methods:

- `network_components(train_text_encoder)`: which modules get LoRA layers and their kohya names;
- `prepare(device, base_dtype, gradient_checkpointing, train_text_encoder)`: freeze, move, cast;
- `encode_images(pixels)`: pixels in [-1, 1] -> scaled latents (deterministic: the posterior mode);
- `encode_captions(captions)`: text -> conditioning dict (batch first);
- `predict(noisy_latents, timesteps, cond, image_info)`: the UNet's output;
- `alphas_cumprod`, `prediction_type`: the noise schedule the model was trained with;
- `restore()`: undo `prepare` (the WebUI bundle puts the model back exactly as it was);
- `offload_vae()`: the VAE may leave the GPU once latents are cached;
- `release_vae_decoder()`, `release_vae()`, `release_text_encoders()`: a run that loaded the bundle for
  itself frees what it no longer needs (on a CPU the weights have no other place to go).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import hashlib
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..network.network import NetworkComponent
from .family import ModelFamily

Conditioning = Dict[str, torch.Tensor]


class ModelBundle(ABC):
    """A base model ready to train a LoRA on; see the module docstring for the contract."""

    family: ModelFamily
    prediction_type: str  # "epsilon" | "v_prediction"
    alphas_cumprod: torch.Tensor  # [num_train_timesteps], float32, CPU
    name: str  # shown in metadata as ss_sd_model_name
    device: torch.device = torch.device("cpu")
    latent_channels: int = 4
    vae_factor: int = 8  # pixels per latent cell
    # Whether text-encoder outputs are deterministic (no dropout) so they may be cached.
    text_encoder_cacheable: bool = True
    # Whether `predict` uses nothing but its tensor arguments (no host data, no hooks that move weights),
    # so a training step may be captured as a CUDA graph (engine/graphs).
    graph_capturable: bool = False

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abstractmethod
    def network_components(self, train_text_encoder: bool) -> List[NetworkComponent]:
        """Modules to wrap with LoRA layers (UNet always; text encoder(s) when asked)."""

    @abstractmethod
    def prepare(self, device: torch.device, base_dtype: torch.dtype, gradient_checkpointing: bool,
                train_text_encoder: bool) -> None:
        """Freeze every base weight, move to `device`, cast the frozen weights to `base_dtype`."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> latents [B, C, H/f, W/f] already multiplied by the VAE scale."""

    @abstractmethod
    def encode_captions(self, captions: Sequence[str]) -> Conditioning:
        """Captions -> conditioning tensors, batch first (gradients flow when the text encoder trains)."""

    @abstractmethod
    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                image_info: Optional[Sequence] = None) -> torch.Tensor:
        """The denoiser's output (noise or velocity, per `prediction_type`)."""

    def restore(self) -> None:
        """Undo `prepare` where that matters (default: nothing)."""

    def use_channels_last(self) -> None:
        """Put the denoiser's weights (and so its convolutions) in channels-last layout; default: no-op."""

    def compile(self) -> None:
        """torch.compile the denoiser in place (after LoRA layers are in); default: not supported, no-op."""

    def packed_convolution_bytes(self, in_place: bool = False, skip: Collection[nn.Module] = (),
                                 lean: bool = False) -> int:
        """Memory `pack_convolutions(in_place, skip, lean)` would add; 0 where this bundle does not pack (the default)."""
        return 0

    def pack_convolutions(self, in_place: bool = False, skip: Collection[nn.Module] = (), lean: bool = False) -> None:
        """Run the denoiser's frozen convolutions on weights pre-packed for oneDNN (CPU; see
        models/packed_convs), `in_place`: instead of the original weights; not the layers of `skip`; `lean`:
        the fp32 layers that lose little as GEMMs run so, without copies (models/gemm_convs);
        `restore()` unpacks them. Default: not supported, no-op."""

    def use_half_precision_norms(self) -> None:
        """Run the denoiser's frozen GroupNorm/LayerNorm layers in the base weights' half-precision dtype
        instead of autocast's fp32 (GPU; see models/half_norms); `restore()` undoes it. Default: no-op."""

    def enable_gradient_checkpointing(self, text_encoder: bool) -> None:
        """Turn activation checkpointing on mid-run (out-of-memory recovery)."""

    def offload_vae(self) -> None:
        """Move the VAE off the accelerator when it is no longer needed (default: nothing)."""

    def offload_text_encoder(self) -> None:
        """Move a frozen text encoder off the accelerator once captions are cached (default: nothing)."""

    def release_vae_decoder(self) -> None:
        """Free the VAE's decoder for good: nothing renders (as `release_vae`). Default: nothing."""

    def release_vae(self) -> None:
        """Free the VAE's weights for good: every latent is cached and nothing renders; only a bundle its run
        loaded for itself (the bundle encodes no image afterwards). Default: `offload_vae()`."""
        self.offload_vae()

    def release_text_encoders(self) -> None:
        """Free the frozen text encoders' weights for good: every caption is cached and nothing renders (as
        `release_vae`). Default: `offload_text_encoder()`."""
        self.offload_text_encoder()

    def sample(self, prompts: Sequence) -> List:
        """PIL images for `SamplePrompt`s with the current weights (LoRA included), or raise LoraTrainerError
        when this bundle cannot render."""
        from ..errors import LoraTrainerError

        raise LoraTrainerError(f"{type(self).__name__} cannot render sample images")

    def count_tokens(self, text: str) -> Optional[int]:
        """Tokens of a caption without BOS/EOS (None when the bundle cannot tell)."""
        return None

    def vae_fingerprint(self) -> str:
        """A short id of the VAE weights, for keying latent caches on disk."""
        return module_fingerprint(getattr(self, "vae"))

    @property
    def fixed_placement(self) -> Optional[Tuple[torch.device, torch.dtype]]:
        """(device, weight dtype) when the model's owner decides them (the WebUI); None: the trainer picks."""
        return None


def module_fingerprint(module: nn.Module, tensors: int = 8) -> str:
    """A short hash of a module's first few weights (names and leading bytes)."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items())[:tensors]:
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]
