"""The WebUI's built-in Lora extension (its `networks` module, present when that extension is enabled):
deactivate what it applied, re-read its list, and load a file with its own loader to prove every module
matched (the WebUI reports unmatched keys only at DEBUG level)."""
from __future__ import annotations

import sys
from typing import Any, Dict, Set, Tuple

from ...errors import LoraTrainerError


def _networks() -> Any:
    """The built-in Lora extension's `networks` module (None when that extension is disabled)."""
    return sys.modules.get("networks")


def clear_active_networks(sd_model) -> None:
    """Deactivate every built-in Lora network and put the original weights back in place right now.

    The extension restores weights with in-place copies, which it always runs inside a generation (autograd
    off); the WebUI's parameters require grad, so outside `no_grad` the restore fails with "a leaf Variable
    that requires grad is being used in an in-place operation" (training after a txt2img that used a LoRA)."""
    networks = _networks()
    if networks is None:
        return
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)
    with torch.no_grad():
        networks.load_networks([])
        for module in sd_model.modules():
            if isinstance(module, kinds) and hasattr(module, "network_current_names"):
                networks.network_apply_weights(module)


def refresh_networks(name: str) -> None:
    """Re-read the Lora folder and drop any cached copy of `name` so a retrained file is really reloaded."""
    networks = _networks()
    if networks is None:
        return
    networks.networks_in_memory.pop(name, None)
    networks.list_available_networks()


def file_module_names(path: str) -> Set[str]:
    from ...adapters import default_adapter_kinds
    from ...formats.kohya import load_kohya_lora

    tensors, _ = load_kohya_lora(path)
    return set(default_adapter_kinds().module_names(tensors))


def network_on_disk(networks: Any, name: str) -> Any:
    """The Lora list's entry for `name` after re-reading the folder (the WebUI's and Forge's `networks` modules
    keep the same lists); a message naming the folder if there is none."""
    networks.list_available_networks()
    on_disk = networks.available_network_aliases.get(name) or networks.available_networks.get(name)
    if on_disk is None:
        raise LoraTrainerError(f"no LoRA named {name!r} in {networks.shared.cmd_opts.lora_dir}")
    return on_disk


def verify_lora(name: str) -> Dict[str, Any]:
    """Load `name` through the WebUI's built-in Lora extension and compare its modules with the file's."""
    networks = _networks()
    if networks is None:
        raise LoraTrainerError("the built-in Lora extension is not loaded")
    on_disk = network_on_disk(networks, name)
    try:
        networks.load_networks([name])
        net = next(n for n in networks.loaded_networks if n.name == name)
        matched = {m.network_key.split(".")[0] for m in net.modules.values()}
        compared, worst = compare_deltas(net, on_disk.filename)
    finally:
        networks.load_networks([])
    in_file = file_module_names(on_disk.filename)
    model = getattr(getattr(networks, "shared", None), "sd_model", None)
    loaded = "SDXL" if getattr(model, "is_sdxl", False) else "SD2" if getattr(model, "is_sd2", False) else "SD1"
    # the Lora page lists a file only for models of its version (metadata-detected, or the sidecar's "sd version")
    return {"name": name, "file": on_disk.filename, "modules_in_file": len(in_file), "modules_matched": len(matched),
            "unmatched": sorted(in_file - matched), "sd_version": getattr(getattr(on_disk, "sd_version", None), "name", "?"),
            "loaded_model_version": loaded, "deltas_compared": compared, "max_delta_rel_error": worst}


def compare_deltas(net: Any, path: str) -> Tuple[int, float]:
    """(modules compared, largest relative difference) between the change the WebUI's own module computes
    (`calc_updown` on the layer's current weight, multiplier 1) and the change this package reads from the
    file (adapters/), for every module on a Linear / Conv2d layer (OpenCLIP's packed attention is skipped)."""
    import torch

    from ...adapters import default_adapter_kinds
    from ...formats.kohya import load_kohya_lora

    tensors, _ = load_kohya_lora(path)
    ours = default_adapter_kinds().read_modules(tensors, path)
    compared, worst = 0, 0.0
    net.dyn_dim = None  # as a prompt's <lora:name:1> sets it (load_networks without dyn_dims leaves 1.0, a bad slice)
    net.te_multiplier = net.unet_multiplier = 1.0
    with torch.no_grad():
        for module in net.modules.values():
            layer = getattr(module, "sd_module", None)
            file_module = ours.get(module.network_key.split(".")[0])
            if file_module is None or not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            weight = layer.weight.detach().to(torch.float32)
            host, _ = module.calc_updown(weight)
            if getattr(file_module, "needs_base", False):
                mine = file_module.delta_on(weight)
            else:
                mine = file_module.delta(1.0, torch.float32).reshape(weight.shape)
            host = host.to(torch.float32).reshape(weight.shape)
            worst = max(worst, float((host - mine).norm() / mine.norm().clamp_min(1e-30)))
            compared += 1
    return compared, worst
