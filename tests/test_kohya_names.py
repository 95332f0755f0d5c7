"""kohya key names for every targeted module, checked on the full-size SD1.5 architecture (meta device)."""
from __future__ import annotations

import pytest
import torch

from lora_trainer.network.kohya_names import diffusers_to_ldm_unet_path, ldm_to_diffusers_unet_path
from lora_trainer.models import default_families
from lora_trainer.models.diffusers_bundle import DiffusersBundle
from lora_trainer.models.sd1 import SD1_ORIGINAL_CONFIG

LEAVES = ["proj_in", "proj_out"] + [f"transformer_blocks_0_{a}_{p}" for a in ("attn1", "attn2")
                                     for p in ("to_q", "to_k", "to_v", "to_out_0")] + \
         ["transformer_blocks_0_ff_net_0_proj", "transformer_blocks_0_ff_net_2"]


def expected_sd15_unet_names():
    blocks = [f"down_blocks_{i}_attentions_{j}" for i in range(3) for j in range(2)]
    blocks += ["mid_block_attentions_0"]
    blocks += [f"up_blocks_{i}_attentions_{j}" for i in range(1, 4) for j in range(3)]
    return {f"lora_unet_{b}_{leaf}" for b in blocks for leaf in LEAVES}


def expected_sd15_te_names():
    leaves = [f"self_attn_{p}_proj" for p in ("q", "k", "v", "out")] + ["mlp_fc1", "mlp_fc2"]
    return {f"lora_te_text_model_encoder_layers_{n}_{leaf}" for n in range(12) for leaf in leaves}


@pytest.fixture(scope="module")
def full_size_sd15_bundle():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(SD1_ORIGINAL_CONFIG, {}, image_size=512)
    te_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        text_encoder = CLIPTextModel(te_cfg)
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=32)  # not used for names
    return DiffusersBundle(default_families().get("sd1"), unet, vae, text_encoder, tokenizer=None,
                           alphas_cumprod=torch.ones(1000), prediction_type="epsilon")


def names_of(component):
    return [component.kohya_name(p) for p in component.targets]


def test_sd15_unet_has_the_192_kohya_modules(full_size_sd15_bundle):
    (unet,) = full_size_sd15_bundle.network_components(train_text_encoder=False)
    names = names_of(unet)
    assert len(names) == 192 and len(set(names)) == 192
    assert set(names) == expected_sd15_unet_names()


def test_sd15_text_encoder_has_the_72_kohya_modules(full_size_sd15_bundle):
    _, te = full_size_sd15_bundle.network_components(train_text_encoder=True)
    names = names_of(te)
    assert len(names) == 72
    assert set(names) == expected_sd15_te_names()


def test_proj_in_is_a_1x1_conv_target(full_size_sd15_bundle):
    (unet,) = full_size_sd15_bundle.network_components(train_text_encoder=False)
    module = unet.module.get_submodule("down_blocks.0.attentions.0.proj_in")
    assert isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
    assert "down_blocks.0.attentions.0.proj_in" in unet.targets


@pytest.mark.parametrize("ldm,diffusers", [
    ("input_blocks.1.1.proj_in", "down_blocks.0.attentions.0.proj_in"),
    ("input_blocks.2.1.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"),
    ("input_blocks.8.1.proj_out", "down_blocks.2.attentions.1.proj_out"),
    ("middle_block.1.transformer_blocks.0.ff.net.2", "mid_block.attentions.0.transformer_blocks.0.ff.net.2"),
    ("output_blocks.3.1.proj_in", "up_blocks.1.attentions.0.proj_in"),
    ("output_blocks.11.1.transformer_blocks.0.attn2.to_out.0", "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"),
])
def test_ldm_and_diffusers_paths_map_both_ways(ldm, diffusers):
    assert ldm_to_diffusers_unet_path(ldm, layers_per_block=2) == diffusers
    assert diffusers_to_ldm_unet_path(diffusers, layers_per_block=2) == ldm
