"""Memory planner: the peak memory a config will need, and the largest batch that fits, before training.

The estimate is built from the real model code, not from a table: the architecture is built on the
`meta` device (no memory), LoRA layers are injected as in training, and one forward pass at the
config's batch size and resolution records every tensor autograd saves for the backward pass
(`saved_tensors_hooks`). Attention is counted as memory-efficient SDPA does it (q, k, v, output and
the log-sum-exp; never the L x L matrix). Peak = base weights + LoRA training state (weights, grads,
two AdamW moments) + saved activations + the transient of the first backward op.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .config import TrainConfig
from .models.packed_convs import decide_packing, packed_weight_bytes
from .utils.device import available_ram, pick_device, pick_precision

GiB = 2**30
LORA_STATE_BYTES_PER_PARAM = 16  # fp32 weight + grad + AdamW exp_avg + exp_avg_sq


@dataclass
class MemoryPlan:
    device: str
    batch_size: int
    resolution: int
    gradient_checkpointing: bool
    weights: int
    lora_state: int
    activations: int
    transient: int
    loading: int = 0  # a CPU's peak while the model loads in fp32, before its frozen weights are cast
    packed: int = 0  # copies of the frozen convolution weights packed for oneDNN (CPU: models/packed_convs)
    capacity: Optional[int] = None
    max_batch: Optional[int] = None
    advice: List[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(self.weights + self.packed + self.lora_state + self.activations + self.transient, self.loading)

    @property
    def fits(self) -> Optional[bool]:
        return None if self.capacity is None else self.peak <= self.capacity

    def lines(self) -> List[str]:
        out = [f"device {self.device}; batch {self.batch_size} at {self.resolution} px; gradient checkpointing "
               f"{'on' if self.gradient_checkpointing else 'off'}",
               f"  base weights      {self.weights / GiB:7.2f} GiB",
               *([f"  packed conv copies{self.packed / GiB:7.2f} GiB"] if self.packed else []),
               f"  LoRA train state  {self.lora_state / GiB:7.2f} GiB",
               f"  activations       {self.activations / GiB:7.2f} GiB",
               f"  backward transient{self.transient / GiB:7.2f} GiB"]
        if self.loading > self.weights:
            out.append(f"  loading (fp32)    {self.loading / GiB:7.2f} GiB  (before the weights are cast)")
        out.append(f"  estimated peak    {self.peak / GiB:7.2f} GiB")
        if self.capacity is not None:
            out.append(f"  available         {self.capacity / GiB:7.2f} GiB -> {'fits' if self.fits else 'does NOT fit'}")
        if self.max_batch is not None:
            out.append(f"largest batch_size that fits: {self.max_batch}")
        out += [f"advice: {a}" for a in self.advice]
        return out


class _FlashLikeAttention(torch.autograd.Function):
    """Stands in for memory-efficient SDPA on `meta`: same output shape, saves what flash attention saves."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - planning never runs backward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _flash_like_sdpa():
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        return _FlashLikeAttention.apply(q, k, v)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def saved_activation_bytes(fn, modules=()) -> Dict[str, int]:
    """Run `fn()` recording the distinct storages autograd saves, other than the modules' own weights
    (counted once, as weights); returns total and largest bytes."""
    weights = {p.untyped_storage()._cdata for m in modules for p in m.parameters()}
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        key = t.untyped_storage()._cdata
        if key not in weights:
            storages[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _flash_like_sdpa():
        fn()
    return {"total": sum(storages.values()), "largest": max(storages.values(), default=0)}


def _param_bytes(module: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> int:
    return sum(p.numel() * (dtype.itemsize if dtype else p.element_size()) for p in module.parameters())


def _meta_parts(config: TrainConfig):
    """UNet/VAE/text encoder(s) of the config's base model on `meta` (configs only, no weights read), and
    its family under "family"."""
    from .models import default_families
    from .models.architecture import build_sd_architecture
    from .models.loading import check_base_model_path, original_config_for, safetensors_shapes

    path = check_base_model_path(config.base_model)
    families = default_families()
    if path.is_dir():
        return _meta_from_folder(path, families)
    shapes = safetensors_shapes(path)
    family = families.detect(shapes.keys(), shapes, source=str(path))
    original = original_config_for(path, family, shapes, config.base_model_config)
    return {**build_sd_architecture(original, "meta", family=family), "family": family}


def _meta_from_folder(path: Path, families):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(path, subfolder="vae"))
        te_config = CLIPTextConfig.from_pretrained(path, subfolder="text_encoder")
        parts = {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(te_config)}
        if (path / "text_encoder_2").is_dir():
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(path, subfolder="text_encoder_2"))
    parts["family"] = families.detect_diffusers(unet.config, te_config, source=str(path))
    return parts


def _text_encoders(parts) -> List[torch.nn.Module]:
    return [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]


def _added_cond(unet, batch: int, dtype: torch.dtype) -> Optional[Dict[str, torch.Tensor]]:
    """SDXL-style UNets (addition_embed_type text_time) also take a pooled text embedding and 6 time ids."""
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        return None
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {"text_embeds": torch.empty(batch, pooled, device="meta", dtype=dtype),
            "time_ids": torch.empty(batch, 6, device="meta", dtype=dtype)}


def estimate(config: TrainConfig, batch_size: Optional[int] = None, parts=None,
             device: Optional[torch.device] = None) -> MemoryPlan:
    """Estimated peak memory of training `config` (optionally at another batch size)."""
    from .adapters import default_adapter_kinds
    from .network.network import AdapterNetwork, NetworkComponent
    from .network.targets import text_encoder_targets, unet_conv_targets, unet_targets
    from .models.sd1 import SD1Family

    device = device or pick_device(config.device)
    precision = pick_precision(config.mixed_precision, device)
    dtype = precision.autocast_dtype or torch.float32
    batch = batch_size or config.batch_size
    parts = parts or _meta_parts(config)
    checkpointing = config.gradient_checkpointing_for(parts.get("family") or SD1Family())
    unet, vae, encoders = parts["unet"], parts["vae"], _text_encoders(parts)
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    comps = [NetworkComponent("unet", unet, unet_targets(unet), lambda p: p, unet_conv_targets(unet))]
    if config.train_text_encoder:
        comps += [NetworkComponent(f"te{i}", te, text_encoder_targets(te), lambda p, i=i: f"te{i}.{p}")
                  for i, te in enumerate(encoders)]
    with torch.device("meta"):
        net = AdapterNetwork.inject(comps, default_adapter_kinds().spec_for(config))
    try:
        if checkpointing:
            from .models.diffusers_bundle import flag_checkpointed_blocks

            unet.enable_gradient_checkpointing()
            flag_checkpointed_blocks(unet)
        for module in (unet, *encoders):
            module.to(dtype)
        for p in net.parameters():
            p.data = p.data.float()
        lora_params = net.parameter_count()
        read = net.base_layers_read()  # DoRA's base layers are not packed (the trainer skips them)
        latent = config.resolution // 8

        def forward():
            ctx = torch.empty(batch, 77, unet.config.cross_attention_dim, device="meta", dtype=dtype)
            if config.train_text_encoder:
                ids = torch.zeros(batch, 77, dtype=torch.long, device="meta")
                outs = [te(ids, output_hidden_states=True).hidden_states[-2] for te in encoders]
                ctx = torch.cat(outs, dim=-1) if len(outs) > 1 else encoders[0](ids)[0]
            x = torch.empty(batch, unet.config.in_channels, latent, latent, device="meta", dtype=dtype)
            unet(x, torch.zeros(batch, dtype=torch.long, device="meta"), encoder_hidden_states=ctx,
                 added_cond_kwargs=_added_cond(unet, batch, dtype))

        saved = saved_activation_bytes(forward, (unet, *encoders))
    finally:
        net.remove()
    weights = _param_bytes(unet, precision.base_dtype) + sum(_param_bytes(te, precision.base_dtype) for te in encoders)
    if device.type == "cpu" or config.cache_latents is False:
        weights += _param_bytes(vae, torch.float32)  # on the GPU the VAE leaves once latents are cached
    # a CPU holds the whole model in fp32 while it loads (diffusers' default), before bf16 halves the weights
    loading = sum(_param_bytes(m, torch.float32) for m in (unet, vae, *encoders)) if device.type == "cpu" else 0
    packed = packed_weight_bytes(unet, precision.base_dtype, in_place=True, skip=read)  # as the trainer packs
    lean_packed = packed_weight_bytes(unet, precision.base_dtype, in_place=True, skip=read, lean=True)
    pack, lean, _ = decide_packing(config.pack_conv_weights, config.torch_compile, device, precision, packed,
                                   available_ram(), lean_packed)
    packed = 0 if not pack else lean_packed if lean else packed
    plan = MemoryPlan(device=str(device), batch_size=batch, resolution=config.resolution,
                      gradient_checkpointing=checkpointing, weights=weights,
                      lora_state=lora_params * LORA_STATE_BYTES_PER_PARAM, activations=saved["total"],
                      transient=2 * saved["largest"], loading=loading, packed=packed)
    return plan


def device_capacity(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total
    return available_ram()


def plan(config: TrainConfig, max_batch_search: int = 64) -> MemoryPlan:
    """The plan for the config's batch size, the largest batch that fits, and what to change if none does."""
    device = pick_device(config.device)
    parts = _meta_parts(config)
    result = estimate(config, parts=parts, device=device)
    result.capacity = device_capacity(device)
    if result.capacity is None:
        return result
    best, batch = 0, 1
    while batch <= max_batch_search:
        if estimate(config, batch_size=batch, parts=parts, device=device).peak > result.capacity:
            break
        best, batch = batch, batch * 2
    result.max_batch = best or None
    if not best:
        result.advice.append("nothing fits: turn on gradient_checkpointing, lower resolution or lora_rank, or use "
                             "mixed_precision bf16/fp16 on a GPU")
    elif best < result.batch_size:
        result.advice.append(f"lower batch_size to {best} and raise gradient_accumulation_steps to keep the "
                             f"effective batch, or turn on gradient_checkpointing")
    return result
