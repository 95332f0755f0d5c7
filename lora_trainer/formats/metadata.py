"""The metadata written into every LoRA file: kohya `ss_*` keys and `modelspec.*`."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional

from .. import __version__
from ..adapters import default_adapter_kinds


def training_metadata(*, config, family, prediction_type: str, base_model_name: str, started_at: float,
                      steps: int, epoch: int, dataset=None, extra: Optional[Dict[str, Any]] = None,
                      network=None) -> Dict[str, str]:
    """kohya-compatible `ss_*` metadata (all values are strings) plus `modelspec.*`; the `ss_network_*`
    entries come from the network's spec (default: the config's; `init_lora` runs pass the file's)."""
    network = network or default_adapter_kinds().spec_for(config)
    name = config.effective_output_name
    meta: Dict[str, Any] = {
        **network.kind.metadata(network),
        "ss_base_model_version": family.base_model_version(prediction_type),
        "ss_v2": str(bool(family.is_v2)),
        "ss_v_parameterization": str(prediction_type == "v_prediction"),
        "ss_output_name": name,
        "ss_sd_model_name": base_model_name,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": time.time(),
        "ss_steps": steps,
        "ss_epoch": epoch,
        "ss_num_epochs": config.epochs,
        "ss_max_train_steps": config.max_steps or "",
        "ss_learning_rate": config.learning_rate,
        "ss_unet_lr": config.effective_unet_lr,
        "ss_text_encoder_lr": config.effective_text_encoder_lr if config.train_text_encoder else "",
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_optimizer": config.optimizer,
        "ss_batch_size_per_device": config.batch_size,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(config.gradient_checkpointing_for(family)),
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_noise_offset": config.noise_offset if config.noise_offset else "",
        "ss_min_snr_gamma": config.min_snr_gamma if config.min_snr_gamma else "",
        "ss_clip_skip": config.clip_skip,
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_seed": config.seed,
        "ss_caption_dropout_rate": config.caption_dropout_rate,
        "ss_shuffle_caption": str(config.shuffle_caption),
        "ss_keep_tokens": config.keep_tokens,
        "ss_flip_aug": str(config.flip_aug),
        "ss_enable_bucket": str(config.enable_bucket),
        "ss_min_bucket_reso": config.min_bucket_reso,
        "ss_max_bucket_reso": config.max_bucket_reso,
        "ss_bucket_no_upscale": str(config.bucket_no_upscale),
        "ss_cache_latents": str(config.cache_latents),
        "ss_caption_extension": config.caption_extension,
        "ss_training_comment": f"trained with lora_trainer {__version__}",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": family.modelspec_architecture_for(prediction_type),
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": name,
        "modelspec.resolution": f"{config.resolution}x{config.resolution}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
    }
    if config.trigger_word:
        meta["modelspec.trigger_phrase"] = config.trigger_word
    if dataset is not None:
        meta.update(dataset_metadata(dataset))
    meta.update(extra or {})
    return {k: str(v) for k, v in meta.items()}


def dataset_metadata(dataset) -> Dict[str, Any]:
    """`ss_num_train_images`, `ss_tag_frequency`, `ss_dataset_dirs`, `ss_bucket_info`."""
    from ..data.doctor import tag_frequency

    dirs: Dict[str, Dict[str, int]] = {}
    for r in dataset.records:
        d = dirs.setdefault(r.subset or ".", {"n_repeats": r.repeats, "img_count": 0})
        d["img_count"] += 1
    return {
        "ss_num_train_images": dataset.samples_per_epoch,
        "ss_tag_frequency": json.dumps(tag_frequency(dataset.records)),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_bucket_info": json.dumps(dataset.bucket_metadata()),
    }

