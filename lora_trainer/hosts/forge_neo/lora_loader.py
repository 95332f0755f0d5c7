"""Forge Neo's built-in LoRA extension (`sd_forge_lora`, its `networks` module) and LoRA loader
(`backend.patcher.lora`): deactivate what it applied, re-read its list, and load a file with Forge's own
key matching to prove every module matched. Forge's code is imported inside the functions only."""
from __future__ import annotations

import sys
from typing import Any, Dict, Mapping, Tuple

from ...errors import LoraTrainerError
from ..a1111.lora_extension import file_module_names, network_on_disk


def _networks() -> Any:
    """Forge's `networks` module (None when its built-in LoRA extension is disabled)."""
    return sys.modules.get("networks")


def clear_active_loras(sd_model: Any) -> None:
    """Deactivate Forge's LoRAs (its own `load_networks` with empty lists: the A1111-style `load_networks([])`
    fails in Forge), then load the UNet and text-encoder patchers through Forge's memory manager, which puts
    the weights a previous `<lora:...>` generation patched in back from its backups."""
    networks = _networks()
    if networks is not None:
        networks.load_networks([], [], [])
    from backend import memory_management

    objects = sd_model.forge_objects
    memory_management.load_models_gpu([objects.unet, objects.clip.patcher])


def refresh_loras() -> None:
    """Re-read the Lora folder (Forge reads a file again whenever the active LoRA list changes)."""
    networks = _networks()
    if networks is not None:
        networks.list_available_networks()


def _file_for(name: str) -> str:
    networks = _networks()
    if networks is None:
        raise LoraTrainerError("Forge's built-in LoRA extension (sd_forge_lora) is not loaded")
    return network_on_disk(networks, name).filename


def verify_lora(name: str, sd_model: Any) -> Dict[str, Any]:
    """Match LoRA `name`'s keys with Forge's loader (`load_lora` on Forge's UNet and CLIP key maps) and have a
    throw-away clone of each patcher accept the patches; nothing is applied to the model."""
    from backend.patcher.lora import load_lora, model_lora_keys_clip, model_lora_keys_unet
    from backend.utils import load_torch_file

    filename = _file_for(name)
    objects = sd_model.forge_objects
    tensors = load_torch_file(filename, safe_load=True)
    unet_keys, clip_keys = model_lora_keys_unet(objects.unet.model, {}), model_lora_keys_clip(objects.clip.cond_stage_model, {})
    unet_patches, rest = load_lora(tensors, unet_keys)
    clip_patches, rest = load_lora(rest, clip_keys)
    accepted = set(objects.unet.clone().add_patches(unet_patches)) | set(objects.clip.clone().add_patches(clip_patches))
    refused = sorted(set(unet_patches) - accepted) + sorted(set(clip_patches) - accepted)
    compared, worst, unchanged = compare_deltas(filename, [(unet_patches, unet_keys, objects.unet.model),
                                                           (clip_patches, clip_keys, objects.clip.cond_stage_model)])
    in_file = file_module_names(filename)
    left = {key.split(".")[0] for key in rest}
    loaded = "SDXL" if getattr(sd_model, "is_sdxl", False) else "SD1" if getattr(sd_model, "is_sd1", False) else "?"
    return {"name": name, "file": filename, "modules_in_file": len(in_file), "modules_matched": len(in_file - left),
            "unmatched": sorted(in_file & left), "patches_refused": refused, "sd_version": file_version(filename),
            "loaded_model_version": loaded, "deltas_compared": compared, "max_delta_rel_error": worst,
            "max_unchanged_rel_change": unchanged}


def compare_deltas(filename: str, parts: Any) -> Tuple[int, float, float]:
    """(modules compared, largest relative difference, largest change of an unchanged module relative to its
    weight) between the change Forge's own `merge_lora_to_weight` makes to each weight from this file's patch
    alone (fp32, strength 1; not the patches of LoRAs a prompt left active) and the change this package reads
    from the file. A module training left unchanged (DoRA: `dora_scale` still the weight's own norms, e.g. a
    text-encoder layer after the one used) has no change to be relative to: Forge's W * (scale / norm) then
    differs from W by the rounding of the stored fp32 norms, measured against W. Each item of `parts` is (the
    file's patches from Forge's `load_lora`, Forge's kohya-name -> weight-key map, the model they patch); a
    packed weight's slices (offset patches) are skipped."""
    import torch
    from backend.patcher.lora import merge_lora_to_weight

    from ...adapters import default_adapter_kinds
    from ...formats.kohya import load_kohya_lora

    ours = default_adapter_kinds().read_modules(load_kohya_lora(filename)[0], filename)
    compared, worst, unchanged = 0, 0.0, 0.0
    for patches, key_map, model in parts:
        names = _names_by_weight_key(key_map, ours)
        weights = model.state_dict()
        for key, patch in patches.items():
            file_module = ours.get(names.get(key, "")) if isinstance(key, str) else None
            if file_module is None or key not in weights:
                continue
            weight = weights[key].detach().to(torch.float32)
            host = merge_lora_to_weight([(1.0, patch, 1.0, None, None)], weight.clone(), key) - weight
            mine = file_module.delta_on(weight) if getattr(file_module, "needs_base", False) else \
                file_module.delta(1.0, torch.float32).reshape(weight.shape)
            if mine.norm() > 0:
                worst = max(worst, float((host - mine).norm() / mine.norm()))
            else:
                unchanged = max(unchanged, float(host.norm() / weight.norm().clamp_min(1e-30)))
            compared += 1
    return compared, worst, unchanged


def _names_by_weight_key(key_map: Mapping[str, Any], ours: Mapping[str, Any]) -> Dict[str, str]:
    """Forge's weight key -> the file's module name, for the names the file has (Forge maps several aliases)."""
    return {weight_key: name for name, weight_key in key_map.items() if name in ours and isinstance(weight_key, str)}


def file_version(filename: str) -> str:
    """SDXL / SD1 / SD2 from the file's `ss_base_model_version` (what Forge's Lora page filters by)."""
    from ...formats.kohya import load_kohya_lora

    version = load_kohya_lora(filename)[1].get("ss_base_model_version", "")
    return "SDXL" if version.startswith("sdxl") else "SD2" if version.startswith("sd_v2") else "SD1" if version else "?"
