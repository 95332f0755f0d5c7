"""LoRA tools on a tiny real ldm checkpoint: which checkpoint weight each kohya module patches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.lora.kohya_names import kohya_name, text_encoder_path
from lora_trainer.lora.unet_paths import infer_layers_per_block, ldm_to_diffusers_unet_module
from lora_trainer.models import default_families
from lora_trainer.models.loading import load_bundle
from lora_trainer.models.sd1 import SD1_ORIGINAL_CONFIG
from lora_trainer.tiny import tiny_original_config

from ldm_tiny import build_tiny_ldm, import_ldm, save_single_file

UNET_PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    save_single_file(build_tiny_ldm(tmp, seed=0), tmp / "models" / "tiny.safetensors")
    return tmp / "models" / "tiny.safetensors"


def _bundle(path: Path, tiny_ckpt: Path):
    """A checkpoint converted to diffusers by the trainer's loader (the tokenizer build_tiny_ldm wrote)."""
    return load_bundle(str(path), default_families(), tokenizer_path=str(tiny_ckpt.parent.parent / "ldm_tokenizer"))


@pytest.fixture(scope="module")
def base_bundle(tiny_ckpt):
    return _bundle(tiny_ckpt, tiny_ckpt)


def runtime_layers(bundle):
    """{kohya name: Linear/Conv2d module} of a converted (diffusers) model, named independently of the tools."""
    layers = {}
    for path, module in bundle.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            layers[kohya_name("lora_unet", path)] = module
    for path, module in bundle.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            layers[kohya_name("lora_te", text_encoder_path(path))] = module
    return layers


# ---------------------------------------------------------------------------- key maps
def test_unet_path_map_matches_the_diffusers_converter(tiny_ckpt):
    from diffusers.loaders import single_file_utils as sfu

    sd = load_file(str(tiny_ckpt))  # a real ldm UNetModel's state dict, saved as a WebUI checkpoint
    converted = sfu.convert_ldm_unet_checkpoint(sd, sfu.create_unet_diffusers_config_from_ldm(
        tiny_original_config(), sd, image_size=64))
    unet = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    layers = infer_layers_per_block(unet)
    mapped = {ldm_to_diffusers_unet_module(k, layers): k for k in unet}
    assert layers == 1 and set(mapped) == set(converted) and len(mapped) == len(unet)  # a bijection
    for diffusers_key, ldm_key in mapped.items():
        assert torch.equal(converted[diffusers_key].reshape(unet[ldm_key].shape), unet[ldm_key]), ldm_key


def test_every_lora_target_maps_to_its_checkpoint_weight(tiny_ckpt, base_bundle):
    sd = load_file(str(tiny_ckpt))
    targets = default_families().get("sd1").checkpoint_lora_keys({k: tuple(v.shape) for k, v in sd.items()})
    names = [c.kohya_name(p) for c in base_bundle.lora_components(True) for p in c.targets]
    assert len(names) > 40 and set(names) <= set(targets)
    layers = runtime_layers(base_bundle)  # every Linear / Conv2d: also ResNet and sampler convs, conv_in/out
    assert set(layers) == set(targets)
    for name, module in layers.items():
        assert torch.equal(sd[targets[name]].reshape(module.weight.shape), module.weight), name


def test_full_size_sd15_checkpoint_keys_cover_kohya_lora_and_locon_names():
    """ldm keys of a full-size SD1.5 checkpoint (meta tensors): kohya's 192 + 72 LoRA modules and the 86
    LoCon modules (ResNet convs and time_emb_proj, conv_shortcut, down/up samplers) map with their shapes."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    import_ldm()
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from test_kohya_names import expected_sd15_te_names, expected_sd15_unet_names

    unet_params = SD1_ORIGINAL_CONFIG["model"]["params"]["unet_config"]["params"]
    te_config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    with torch.device("meta"):
        ldm_unet, text_encoder = UNetModel(**unet_params), CLIPTextModel(te_config)
        unet = UNet2DConditionModel(**sfu.create_unet_diffusers_config_from_ldm(SD1_ORIGINAL_CONFIG, {}, image_size=512))
    shapes = {f"{UNET_PREFIX}{k}": tuple(v.shape) for k, v in ldm_unet.state_dict().items()}
    shapes.update({f"cond_stage_model.transformer.{text_encoder_path(k)}": tuple(v.shape)
                   for k, v in text_encoder.state_dict().items()})
    targets = default_families().get("sd1").checkpoint_lora_keys(shapes)
    assert expected_sd15_unet_names() | expected_sd15_te_names() <= set(targets)
    locon = {}
    for path, module in unet.named_modules():
        if type(module).__name__ in ("ResnetBlock2D", "Downsample2D", "Upsample2D"):
            for child, layer in module.named_modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                    locon[kohya_name("lora_unet", f"{path}.{child}")] = tuple(layer.weight.shape)
    assert len(locon) == 86
    assert all(shapes[targets[name]] == shape for name, shape in locon.items())
