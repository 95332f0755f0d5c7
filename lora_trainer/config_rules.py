"""The rules a config's values must follow beyond their type: numbers in range, bucket limits that contain the
resolution, a plain output name. `config._validate` applies them to a `TrainConfig`."""
from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import ConfigError
from .utils.names import name_problem

ZERO_ADVICE = {
    "learning_rate": "a learning rate of 0 trains nothing",
    "unet_lr": "a learning rate of 0 trains nothing",
    "text_encoder_lr": "a learning rate of 0 trains nothing; to leave the text encoder alone set "
                       "train_text_encoder: false",
    "text_encoder_2_lr": "a learning rate of 0 trains nothing",
    "lora_alpha": "alpha 0 scales the LoRA by 0 (kohya reads 0 as 'equal to the rank': leave lora_alpha out "
                  "for that)",
    "min_snr_gamma": "gamma 0 weights every loss by 0; leave it out to turn Min-SNR off",
}


def check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Numbers must be finite and inside the field's bounds (`meta`: min, max, positive = above 0)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):
        raise ConfigError(f"config error: {name}: {value} is not a finite number")
    lo, hi = meta.get("min"), meta.get("max")
    if meta.get("positive") and value <= 0:
        why = ZERO_ADVICE.get(name, "it must be greater than 0")
        raise ConfigError(f"config error: {name}: {value:g} must be greater than 0 ({why})")
    if lo is not None and value < lo:
        raise ConfigError(f"config error: {name}: {value} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"config error: {name}: {value} is above the maximum {hi}")


def resolve_buckets(cfg: Any) -> None:
    """Bucket limits left empty follow the resolution (half and twice it); set ones must contain it."""
    step = cfg.bucket_reso_steps
    if cfg.min_bucket_reso is None:
        object.__setattr__(cfg, "min_bucket_reso", max(64, step, cfg.resolution // 2 // step * step))
    if cfg.max_bucket_reso is None:
        object.__setattr__(cfg, "max_bucket_reso", max(cfg.min_bucket_reso, cfg.resolution * 2))
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        raise ConfigError(f"config error: min_bucket_reso {cfg.min_bucket_reso} is larger than max_bucket_reso "
                          f"{cfg.max_bucket_reso}")
    if not cfg.enable_bucket:
        return
    if cfg.min_bucket_reso > cfg.resolution:
        raise ConfigError(f"config error: min_bucket_reso {cfg.min_bucket_reso} is larger than resolution "
                          f"{cfg.resolution}: every image would train at {cfg.min_bucket_reso} px or more. Lower "
                          f"min_bucket_reso, or leave it out to follow the resolution")
    if cfg.max_bucket_reso < cfg.resolution:
        raise ConfigError(f"config error: max_bucket_reso {cfg.max_bucket_reso} is smaller than resolution "
                          f"{cfg.resolution}: no image could train at the resolution. Raise max_bucket_reso, or "
                          f"leave it out to follow the resolution")


def check_output_name(cfg: Any) -> None:
    """The LoRA's name must be one plain file name inside output_dir."""
    if cfg.output_name is not None:
        problem = name_problem(cfg.output_name)
        if problem:
            raise ConfigError(f"config error: output_name: {cfg.output_name!r} is not a plain file name: {problem}. "
                              f"Give a name without folders, e.g. my_lora (the folder goes in output_dir)")
        return
    problem = name_problem(cfg.effective_output_name)
    if problem:
        raise ConfigError(f"config error: output_name is not set, and the name taken from output_dir "
                          f"({cfg.effective_output_name!r}) is not a plain file name: {problem}. Set output_name")
