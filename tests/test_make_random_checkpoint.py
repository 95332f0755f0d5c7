"""tools/make_random_checkpoint.py: its diffusers -> original renaming is read back exactly by diffusers' own
ldm converters (tiny real models), and at full size it produces the published SD1.5 / SDXL key layout
(built on the meta device, so no memory is used)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("make_random_checkpoint", ROOT / "tools" / "make_random_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_SD1 = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
                attention_head_dim=8, norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_SDXL = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
                 attention_head_dim=(4, 8), norm_num_groups=8, transformer_layers_per_block=(1, 2),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32 + 6 * 8,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


@pytest.mark.parametrize("config", [TINY_SD1, TINY_SDXL], ids=["sd1", "sdxl"])
def test_unet_round_trip(tool, config):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    sd = unet.state_dict()
    original = tool.rename(sd, tool.unet_rules(config), "model.diffusion_model.")
    tool.check_round_trip("UNet", sd, convert_ldm_unet_checkpoint(original, dict(unet.config)))
    tool.check_no_zero_layers("UNet", sd)


def test_vae_round_trip(tool):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae = AutoencoderKL(**config)
    sd = vae.state_dict()
    original = tool.vae_to_original(sd, config)
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    tool.check_round_trip("VAE", sd, convert_ldm_vae_checkpoint(original, dict(vae.config)))


def test_text_encoders_round_trip(tool):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
    clip = CLIPTextModel(CLIPTextConfig(**small))
    prefix = "conditioner.embedders.0.transformer."
    original = tool.clip_to_original(clip, prefix)
    expected = {**tool.clip_text_state(clip), "text_model.embeddings.position_ids": original[prefix + "text_model.embeddings.position_ids"]}
    tool.check_round_trip("CLIP", expected, convert_ldm_clip_checkpoint(original, remove_prefix=prefix))

    big = CLIPTextModelWithProjection(CLIPTextConfig(**small, hidden_act="gelu"))
    prefix = "conditioner.embedders.1.model."
    original = tool.open_clip_to_original(big, prefix)
    assert original[prefix + "transformer.resblocks.1.attn.in_proj_weight"].shape == (96, 32)
    expected = {k: v for k, v in big.state_dict().items() if not k.endswith("position_ids")}
    tool.check_round_trip("OpenCLIP", expected, convert_open_clip_checkpoint(big, original, prefix=prefix))


@pytest.mark.parametrize("family,count,known", [
    ("sd15", 686, ["input_blocks.3.0.op.weight", "output_blocks.2.1.conv.weight", "output_blocks.11.1.proj_in.weight",
                   "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "out.2.weight"]),
    ("sdxl", 1680, ["label_emb.0.0.weight", "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
                    "middle_block.1.transformer_blocks.9.ff.net.2.weight", "output_blocks.2.2.conv.weight",
                    "output_blocks.8.0.skip_connection.weight"]),
])
def test_full_size_unet_layout(tool, family, count, known):
    """The real configs give the published key count and names (SD1.5: 686 UNet tensors, SDXL base: 1680)."""
    from diffusers import UNet2DConditionModel

    config = tool.SD15_UNET if family == "sd15" else tool.SDXL_UNET
    with torch.device("meta"):
        sd = UNet2DConditionModel(**config).state_dict()
    names = set(tool.rename(sd, tool.unet_rules(config), "model.diffusion_model.").keys())
    assert len(names) == count
    assert {f"model.diffusion_model.{k}" for k in known} <= names
    diffusers_only = ("down_blocks", "up_blocks", "mid_block", ".resnets.", ".attentions.", "time_embedding", "conv_in")
    assert not [n for n in names if any(part in n for part in diffusers_only)]


def test_text_embedding_mean_is_not_zero_by_construction(tool):
    """The WebUI's "Original" emphasis divides by the prompt embedding's mean: with LayerNorms left at 1 and 0
    that mean is 0.0 in fp32 for some prompts (NaN images in the real host); randomised norms keep it away."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16)
    ids = torch.randint(0, 100, (1, 16))
    plain = CLIPTextModel(config)
    with torch.no_grad():
        plain_mean = plain(ids).last_hidden_state.double().mean().abs().item()
        tool.randomise_layer_norms(plain)
        trained_mean = plain(ids).last_hidden_state.double().mean().abs().item()
    assert plain_mean < 1e-6  # each token's features average to zero: the mean is rounding noise
    assert trained_mean > 1e-3
