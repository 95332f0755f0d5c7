"""Load a base model into a bundle, fully offline: a diffusers folder or a single-file checkpoint.

Single files are converted in memory with diffusers' own ldm converters; the configs they need come
from `base_model_config`, from `<checkpoint>.yaml` beside the file (the WebUI's convention), or from the
family (shipped with the package). What differs between families (UNet config, text encoders, bundle
class, epsilon or v) is asked of the `ModelFamily`. The tokenizer comes from the model folder, `tokenizer_path`,
the local Hugging Face cache, or is rebuilt from open_clip's bundled vocabulary; never the hub.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

from ..errors import ModelLoadError
from ..utils.safetensors_read import read_header, read_tensors
from .bundle import ModelBundle
from .family import FamilyRegistry, ModelFamily, nested_get
from .tokenizers import check_tokenizers, load_clip_tokenizer

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."  # in ldm/sgm single-file checkpoints

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def check_base_model_path(path: str) -> Path:
    """One-line error when `base_model` is not a checkpoint file or a diffusers folder."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"base_model {path!r} does not exist (expected a .safetensors/.ckpt file or a "
                             f"diffusers folder with model_index.json)")
    if p.is_dir() and not (p / "model_index.json").is_file() and not (p / "unet" / "config.json").is_file():
        raise ModelLoadError(f"base_model {path!r} is a folder but not a diffusers model (no model_index.json)")
    if p.is_dir():
        missing = missing_diffusers_parts(p)
        if missing:
            raise ModelLoadError(f"base_model {path!r} is a diffusers folder without {', '.join(missing)}: copy the "
                                 f"whole model folder (or use a single-file checkpoint)")
    if p.is_file() and p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelLoadError(f"base_model {path!r}: unsupported file type {p.suffix!r} "
                             f"(use {', '.join(CHECKPOINT_SUFFIXES[:2])})")
    return p


DIFFUSERS_PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                   "tokenizer": None, "scheduler": "scheduler_config.json"}


def missing_diffusers_parts(folder: Path) -> List[str]:
    """The sub-folders (`unet/`, `vae/` ...) a diffusers model folder lacks, also those its model_index.json names."""
    parts = dict(DIFFUSERS_PARTS)
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    for name in ("text_encoder_2", "tokenizer_2"):
        if isinstance(index.get(name), list) and index[name][0]:
            parts[name] = "config.json" if name.startswith("text") else None
    missing = []
    for name, needed in parts.items():
        sub = folder / name
        if not sub.is_dir():
            missing.append(f"{name}/")
        elif needed and not (sub / needed).is_file():
            missing.append(f"{name}/{needed}")
    return missing


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a single-file checkpoint (.ckpt only through torch.load(weights_only=True))."""
    try:
        if path.suffix.lower() == ".safetensors":
            return read_tensors(path)  # no file mapping held beside the tensors (utils/safetensors_read)
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported the same way
        raise ModelLoadError(f"base_model {str(path)!r} cannot be read: {exc}".splitlines()[0]) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def safetensors_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Tensor shapes of a checkpoint; for .safetensors from the header alone (nothing is loaded)."""
    if path.suffix.lower() == ".safetensors":
        return {k: tuple(v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def alphas_cumprod_from(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """ldm's "linear" schedule (diffusers' scaled_linear): betas = linspace(sqrt(b0), sqrt(b1))^2."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def find_original_config(path: Path, explicit: Optional[str]) -> Optional[Dict[str, Any]]:
    """The original config given for a checkpoint: `explicit`, else `<checkpoint>.yaml` beside it; None if neither."""
    for candidate in ([Path(explicit)] if explicit else []) + [path.with_suffix(".yaml")]:
        if candidate.is_file():
            try:
                return yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise ModelLoadError(f"{candidate}: invalid YAML ({exc})".splitlines()[0]) from None
        if explicit and candidate == Path(explicit):
            raise ModelLoadError(f"base_model_config {explicit!r} does not exist")
    return None


def original_config_for(path: Path, family: ModelFamily, shapes, explicit: Optional[str]) -> Dict[str, Any]:
    """The given original config, else the family's shipped default."""
    found = find_original_config(path, explicit)
    return found if found is not None else family.original_config(shapes)


def load_single_file(path: Path, families: FamilyRegistry, tokenizer_path: Optional[str] = None,
                     config_path: Optional[str] = None) -> Tuple[ModelFamily, Dict[str, Any]]:
    """Convert an ldm/sgm-layout checkpoint into diffusers/transformers modules (in memory, offline)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    sd = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    family = families.detect(sd.keys(), shapes, source=str(path))
    found = find_original_config(path, config_path)
    original = found if found is not None else family.original_config(shapes)
    params = nested_get(original, "model", "params", default={})
    try:
        unet_cfg = family.unet_config(original, sd)
        vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, sd, image_size=512)
        # each part leaves `sd` as it is converted, so the file's copy of it is freed as it goes
        unet = _load_on_meta(UNet2DConditionModel, unet_cfg,
                             sfu.convert_ldm_unet_checkpoint(_take(sd, UNET_PREFIX), unet_cfg), f"{path} (UNet)")
        vae = _load_on_meta(AutoencoderKL, vae_cfg, sfu.convert_ldm_vae_checkpoint(_take(sd, VAE_PREFIX), vae_cfg),
                            f"{path} (VAE)")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot convert the checkpoint ({type(exc).__name__}: {exc})"
                             .splitlines()[0]) from None
    tokenizer = load_clip_tokenizer(tokenizer_path, path.parent)
    parts = family.load_text_encoders(sd, original, tokenizer, str(path))
    del sd
    return family, dict(
        unet=unet.eval(), vae=vae.eval(), **parts,
        alphas_cumprod=alphas_cumprod_from(params.get("linear_start", 0.00085), params.get("linear_end", 0.012),
                                           int(params.get("timesteps", 1000))),
        prediction_type=family.single_file_prediction_type(params, found is not None, unet))


def _take(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The tensors under `prefix`, removed from `sd`."""
    return {k: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}


def _load_on_meta(cls, config: Dict[str, Any], sd: Dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """`cls(**config)` holding the tensors of `sd` (cast to the default dtype) as its weights: built on the meta
    device, so no time goes into a random initialisation that the checkpoint replaces, and `sd` is emptied
    as the weights are taken, so at most one extra tensor is in memory beside the model."""
    with torch.device("meta"):
        module = cls(**config)
    dtype = torch.get_default_dtype()
    weights = {}
    for key in list(sd):
        weights[key] = sd.pop(key).to(dtype)
    _load_strict(module, weights, source, assign=True)
    unset = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if unset:
        raise ModelLoadError(f"{source}: weights do not fit the expected architecture (missing {unset[:3]})")
    return module


def _load_strict(module: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    missing, unexpected = module.load_state_dict(sd, strict=False, assign=assign)
    if missing or unexpected:
        raise ModelLoadError(f"{source}: weights do not fit the expected architecture "
                             f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


def load_diffusers_folder(path: Path, families: FamilyRegistry) -> Tuple[ModelFamily, Dict[str, Any]]:
    """Load a diffusers-layout folder (local files only)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    kw = dict(local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        family = families.detect_diffusers(unet.config, CLIPTextConfig.from_pretrained(path, subfolder="text_encoder",
                                                                                       **kw), source=str(path))
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_parts = family.load_diffusers_text_encoders(path)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(f"base_model {str(path)!r}: cannot load the diffusers folder ({exc})"
                             .splitlines()[0]) from None
    return family, dict(unet=unet, vae=vae, **text_parts, alphas_cumprod=scheduler.alphas_cumprod.float(),
                        prediction_type=scheduler.config.prediction_type)


def load_bundle(base_model: str, families: FamilyRegistry, tokenizer_path: Optional[str] = None,
                base_model_config: Optional[str] = None, clip_skip: int = 1,
                prediction_type: str = "auto") -> ModelBundle:
    """Load `base_model` (file or folder) into the family's bundle."""
    path = check_base_model_path(base_model)
    if path.is_dir():
        family, parts = load_diffusers_folder(path, families)
    else:
        family, parts = load_single_file(path, families, tokenizer_path, base_model_config)
    check_tokenizers(parts, str(path))
    if prediction_type != "auto":
        parts["prediction_type"] = prediction_type
    return family.make_bundle(parts, path.name, clip_skip)
