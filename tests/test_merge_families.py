"""Merging LoRAs into SD2 and SDXL single-file checkpoints (tiny real models in the WebUI's key layout):
the merged checkpoint, converted by the trainer's loader, gives what the LoRAs applied at runtime give,
and merging their exact combination gives the same checkpoint.

Each LoRA covers every module the trainer adapts (UNet and every text encoder), so SD2's and SDXL's
open_clip towers are merged through their packed `in_proj_weight` (q, k, v are row thirds of it).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lora_trainer.models import default_families
from lora_trainer.models.loading import load_bundle
from lora_trainer.tools import LoraSource, combine_loras, merge_loras
from lora_trainer.tools.deltas import read_modules

from ldm_families import build_tiny_sd2_ldm, build_tiny_sdxl_sgm, save_sd2_single_file, save_sdxl_single_file

WEIGHTS = (0.8, -0.5)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def tiny_checkpoint(family: str, tmp: Path) -> Path:
    if family == "sd2":
        return save_sd2_single_file(build_tiny_sd2_ldm(tmp, seed=0), tmp / "models" / "tiny-sd2.safetensors")
    return save_sdxl_single_file(build_tiny_sdxl_sgm(tmp, seed=0), tmp / "models" / "tiny-sdxl.safetensors")


def bundle_of(path: Path, tmp: Path):
    tokenizer = tmp / ("ldm_tokenizer" if (tmp / "ldm_tokenizer").is_dir() else "sgm_tokenizer")
    return load_bundle(str(path), default_families(), tokenizer_path=str(tokenizer))


def adapted_layers(bundle):
    """{kohya name: Linear/Conv2d} of every module the trainer puts a LoRA on (its own naming)."""
    return {c.kohya_name(p): c.module.get_submodule(p) for c in bundle.network_components(True) for p in c.targets}


def random_lora(layers, names, rank: int, alpha: float, seed: int, path: Path) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in names:
        w = layers[name].weight
        tensors[f"{name}.lora_down.weight"] = torch.randn((rank,) + tuple(w.shape[1:]), generator=g) * 0.2
        tensors[f"{name}.lora_up.weight"] = torch.randn((w.shape[0], rank) + (1,) * (w.dim() - 2), generator=g) * 0.2
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path))
    return path


def hook_loras(layers, files_and_weights):
    """Forward hooks adding weight * alpha / r * up(down(x)) to each patched layer's output."""
    handles = []
    for path, weight in files_and_weights:
        for name, f in read_modules(load_file(str(path)), path.name).items():
            def hook(mod, args, output, f=f, weight=weight):
                if isinstance(mod, torch.nn.Conv2d):
                    h = F.conv2d(args[0], f.down, stride=mod.stride, padding=mod.padding, dilation=mod.dilation)
                    return output + weight * f.scale * F.conv2d(h, f.up)
                return output + weight * f.scale * F.linear(F.linear(args[0], f.down), f.up)

            handles.append(layers[name].register_forward_hook(hook))
    return handles


@torch.no_grad()
def outputs(bundle):
    """The UNet's prediction and every text encoder's first output, on fixed random inputs."""
    g = torch.Generator().manual_seed(0)
    unet = bundle.unet
    cfg = unet.config
    kwargs = {}
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding and six size/crop numbers
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    latents = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    result = [unet(latents, torch.tensor([10, 700]), encoder_hidden_states=context, **kwargs).sample]
    for role in TEXT_ENCODERS:
        encoder = getattr(bundle, role, None)
        if encoder is not None:
            ids = torch.randint(1, encoder.config.vocab_size, (2, 77), generator=g)
            result.append(encoder(ids)[0])
    return result


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_merge_equals_runtime_application(tmp_path, family):
    base_path = tiny_checkpoint(family, tmp_path)
    base = bundle_of(base_path, tmp_path)
    assert base.family.name == family
    layers = adapted_layers(base)
    names = sorted(layers)
    te_names = [n for n in names if n.startswith("lora_te")]
    assert any(n.endswith("_self_attn_q_proj") for n in te_names) and any(n.endswith("_mlp_fc2") for n in te_names)
    loras = [random_lora(layers, names, rank=4, alpha=2, seed=1, path=tmp_path / "a.safetensors"),
             random_lora(layers, names[::2], rank=3, alpha=3, seed=2, path=tmp_path / "b.safetensors")]

    out = tmp_path / "merged.safetensors"
    result = merge_loras(base_path, [LoraSource(p, w) for p, w in zip(loras, WEIGHTS)], out)
    assert result.family == family and [m.modules for m in result.loras] == [len(names), len(names[::2])]
    base_sd, merged_sd = load_file(str(base_path)), load_file(str(out))
    assert list(merged_sd) == list(base_sd) and all(merged_sd[k].dtype == base_sd[k].dtype for k in base_sd)
    assert sum(not torch.equal(merged_sd[k], base_sd[k]) for k in base_sd) == result.weights_changed

    # combine (exact) then merge at weight 1 = merging the two
    combined = combine_loras([LoraSource(p, w) for p, w in zip(loras, WEIGHTS)], tmp_path / "ab.safetensors").path
    via_combined = load_file(str(merge_loras(base_path, [LoraSource(combined, 1.0)], tmp_path / "m2.safetensors").path))
    assert max((via_combined[k] - merged_sd[k]).abs().max().item() for k in base_sd) < 1e-5

    merged_out = outputs(bundle_of(out, tmp_path))
    plain_out = outputs(base)
    handles = hook_loras(layers, zip(loras, WEIGHTS))
    try:
        runtime_out = outputs(base)
    finally:
        for h in handles:
            h.remove()
    for merged_t, runtime_t, plain_t in zip(merged_out, runtime_out, plain_out):
        diff = (merged_t - runtime_t).norm().item()
        effect = (runtime_t - plain_t).norm().item()
        print(f"{family} merge vs runtime hooks: relative diff {diff / runtime_t.norm().item():.2e}, "
              f"diff / LoRA effect {diff / effect:.2e}")
        assert effect > 1e-2 * runtime_t.norm().item()  # the LoRAs change this output
        assert diff < 1e-3 * runtime_t.norm().item() and diff < 1e-3 * effect


def test_an_sd2_lora_does_not_merge_into_sdxl(tmp_path):
    sd2 = tiny_checkpoint("sd2", tmp_path / "a")
    layers = adapted_layers(bundle_of(sd2, tmp_path / "a"))
    name = next(n for n in sorted(layers) if n.endswith("_self_attn_q_proj"))
    lora = random_lora(layers, [name], rank=2, alpha=2, seed=3, path=tmp_path / "sd2.safetensors")
    sdxl = tiny_checkpoint("sdxl", tmp_path / "b")
    with pytest.raises(Exception, match="does not fit") as err:
        merge_loras(sdxl, [lora], tmp_path / "out" / "m.safetensors")
    assert name in str(err.value) and not (tmp_path / "out" / "m.safetensors").exists()
