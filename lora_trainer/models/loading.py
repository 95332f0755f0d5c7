"""Load a base model into a bundle, fully offline: a diffusers folder or a single-file checkpoint.

Single files are converted in memory with diffusers' own ldm converters; the configs they need come
from the family (shipped with the package), from `<checkpoint>.yaml` beside the file (the WebUI's
convention), or from `base_model_config`. The tokenizer comes from the model folder, `tokenizer_path`,
the local Hugging Face cache, or is rebuilt from open_clip's bundled vocabulary; never the hub.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import yaml

from ..errors import ModelLoadError
from .diffusers_bundle import DiffusersBundle
from .family import FamilyRegistry, ModelFamily, nested_get
from .tokenizers import load_clip_tokenizer

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def check_base_model_path(path: str) -> Path:
    """One-line error when `base_model` is not a checkpoint file or a diffusers folder."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"base_model {path!r} does not exist (expected a .safetensors/.ckpt file or a "
                             f"diffusers folder with model_index.json)")
    if p.is_dir() and not (p / "model_index.json").is_file() and not (p / "unet" / "config.json").is_file():
        raise ModelLoadError(f"base_model {path!r} is a folder but not a diffusers model (no model_index.json)")
    if p.is_file() and p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelLoadError(f"base_model {path!r}: unsupported file type {p.suffix!r} "
                             f"(use {', '.join(CHECKPOINT_SUFFIXES[:2])})")
    return p


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a single-file checkpoint (.ckpt only through torch.load(weights_only=True))."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported the same way
        raise ModelLoadError(f"base_model {str(path)!r} cannot be read: {exc}".splitlines()[0]) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def safetensors_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Tensor shapes of a checkpoint; for .safetensors from the header alone (nothing is loaded)."""
    if path.suffix.lower() == ".safetensors":
        import json
        import struct

        with open(path, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def alphas_cumprod_from(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """ldm's "linear" schedule (diffusers' scaled_linear): betas = linspace(sqrt(b0), sqrt(b1))^2."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def clip_config_from_state_dict(sd: Dict[str, torch.Tensor], overrides: Optional[Dict[str, Any]] = None):
    """A CLIPTextConfig that fits converted CLIP weights (heads = hidden / 64, as in every SD encoder)."""
    from transformers import CLIPTextConfig

    emb = sd["text_model.embeddings.token_embedding.weight"]
    pos = sd["text_model.embeddings.position_embedding.weight"]
    layers = {int(m.group(1)) for k in sd for m in [re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)] if m}
    hidden = emb.shape[1]
    params = dict(vocab_size=emb.shape[0], hidden_size=hidden, max_position_embeddings=pos.shape[0],
                  num_hidden_layers=len(layers), num_attention_heads=max(1, hidden // 64),
                  intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  hidden_act="quick_gelu", projection_dim=hidden)
    params.update(overrides or {})
    return CLIPTextConfig(**params)


def load_clip_weights(model: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str) -> None:
    """Load `text_model.*` CLIP weights into either transformers layout."""
    if not hasattr(model, "text_model"):
        sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelLoadError(f"{source}: text encoder weights do not fit "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def original_config_for(path: Path, family: ModelFamily, shapes, explicit: Optional[str]) -> Dict[str, Any]:
    for candidate in ([Path(explicit)] if explicit else []) + [path.with_suffix(".yaml")]:
        if candidate.is_file():
            try:
                return yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise ModelLoadError(f"{candidate}: invalid YAML ({exc})".splitlines()[0]) from None
        if explicit and candidate == Path(explicit):
            raise ModelLoadError(f"base_model_config {explicit!r} does not exist")
    return family.original_config(shapes)


def load_single_file(path: Path, families: FamilyRegistry, tokenizer_path: Optional[str] = None,
                     config_path: Optional[str] = None) -> Tuple[ModelFamily, Dict[str, Any]]:
    """Convert an ldm-layout checkpoint into diffusers/transformers modules (in memory, offline)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel

    sd = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    family = families.detect(sd.keys(), shapes, source=str(path))
    original = original_config_for(path, family, shapes, config_path)
    params = nested_get(original, "model", "params", default={})
    try:
        unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, sd, image_size=512)
        unet = UNet2DConditionModel(**unet_cfg)
        _load_strict(unet, sfu.convert_ldm_unet_checkpoint(sd, unet_cfg), f"{path} (UNet)")
        vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, sd, image_size=512)
        vae = AutoencoderKL(**vae_cfg)
        _load_strict(vae, sfu.convert_ldm_vae_checkpoint(sd, vae_cfg), f"{path} (VAE)")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot convert the checkpoint ({type(exc).__name__}: {exc})"
                             .splitlines()[0]) from None
    clip_sd = sfu.convert_ldm_clip_checkpoint(sd)
    if not any(k.startswith("text_model.") for k in clip_sd):
        clip_sd = {f"text_model.{k}": v for k, v in clip_sd.items()}
    tokenizer = load_clip_tokenizer(tokenizer_path, path.parent)
    te_overrides = dict(nested_get(params, "cond_stage_config", "params", "text_config", default={}) or {})
    te_overrides.setdefault("bos_token_id", tokenizer.bos_token_id)
    te_overrides.setdefault("eos_token_id", tokenizer.eos_token_id)
    te_overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(clip_config_from_state_dict(clip_sd, te_overrides))
    load_clip_weights(text_encoder, clip_sd, f"{path} (text encoder)")
    parameterization = params.get("parameterization", "eps")
    return family, dict(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        alphas_cumprod=alphas_cumprod_from(params.get("linear_start", 0.00085), params.get("linear_end", 0.012),
                                           int(params.get("timesteps", 1000))),
        prediction_type="v_prediction" if parameterization == "v" else "epsilon")


def _load_strict(module: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{source}: weights do not fit the expected architecture "
                             f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


def load_diffusers_folder(path: Path, families: FamilyRegistry) -> Tuple[ModelFamily, Dict[str, Any]]:
    """Load a diffusers-layout folder (local files only)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = dict(local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(f"base_model {str(path)!r}: cannot load the diffusers folder ({exc})"
                             .splitlines()[0]) from None
    family = families.detect_diffusers(unet.config, text_encoder.config, source=str(path))
    return family, dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        alphas_cumprod=scheduler.alphas_cumprod.float(),
                        prediction_type=scheduler.config.prediction_type)


def load_bundle(base_model: str, families: FamilyRegistry, tokenizer_path: Optional[str] = None,
                base_model_config: Optional[str] = None, clip_skip: int = 1,
                prediction_type: str = "auto") -> DiffusersBundle:
    """Load `base_model` (file or folder) into a DiffusersBundle."""
    path = check_base_model_path(base_model)
    if path.is_dir():
        family, parts = load_diffusers_folder(path, families)
    else:
        family, parts = load_single_file(path, families, tokenizer_path, base_model_config)
    if prediction_type != "auto":
        parts["prediction_type"] = prediction_type
    return DiffusersBundle(family, name=path.name, clip_skip=clip_skip, **parts)
