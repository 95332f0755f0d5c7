"""Training the WebUI's in-memory SD2 model (real ldm classes) and SDXL model (sgm stand-in) in place: the
family is recognised from the model's structure, names and losses equal the diffusers path on the converted
single file, and the model comes back exactly as it was."""
from __future__ import annotations

import pytest
import torch

from safetensors import safe_open

from lora_trainer.engine.run import load_model, train
from lora_trainer.hosts.a1111.layouts import in_place_bundle
from lora_trainer.hosts.a1111.sdxl_bundle import A1111SDXLBundle
from tiny_data import make_color_dataset

from conftest import make_config
from ldm_families import build_tiny_sd2_ldm, build_tiny_sdxl_sgm, save_sd2_single_file, save_sdxl_single_file
from webui_checks import MidRunPeek, assert_restored, same_lora_same_loss, snapshot


@pytest.fixture
def sd2_ldm(tmp_path):
    return build_tiny_sd2_ldm(tmp_path, seed=0)


@pytest.fixture
def sdxl_sgm(tmp_path):
    return build_tiny_sdxl_sgm(tmp_path, seed=0)


@pytest.fixture
def wide_data(tmp_path):
    """Images that are not square, so each bucket has its own size, crop and time ids."""
    return make_color_dataset(tmp_path / "wide", n=4, size=(96, 64))


# ---------------------------------------------------------------------------- SD2
def test_sd2_webui_model_is_recognised_and_matches_the_converted_file(tmp_path, sd2_ldm, color_data):
    bundle = in_place_bundle(sd2_ldm, name="tiny-sd2")
    assert bundle is not None and bundle.family.name == "sd2" and bundle.prediction_type == "epsilon"
    path = save_sd2_single_file(sd2_ldm, tmp_path / "models" / "tiny-sd2.safetensors")
    cfg = make_config(path, color_data, tmp_path / "out", tokenizer_path=str(tmp_path / "ldm_tokenizer"),
                      train_text_encoder=True)
    converted = load_model(cfg)
    assert converted.family.name == "sd2" and converted.text_encoder.config.num_hidden_layers == 2  # 3 - penultimate
    names, losses, steps = same_lora_same_loss(tmp_path, cfg, [bundle, converted], ["unet", "te"])
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names
    te = [n for n in names if n.startswith("lora_te_")]
    assert len(te) == 12 and "lora_te_text_model_encoder_layers_1_self_attn_q_proj" in te  # the 3rd layer is unused
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert steps[0] == pytest.approx(steps[1], abs=1e-5)


def test_sd2_v_model_from_its_yaml(tmp_path, color_data):
    ldm = build_tiny_sd2_ldm(tmp_path, seed=0, parameterization="v")
    assert in_place_bundle(ldm).prediction_type == "v_prediction"
    path = save_sd2_single_file(ldm, tmp_path / "m" / "tiny-sd2-v.safetensors", parameterization="v")
    cfg = make_config(path, color_data, tmp_path / "out", tokenizer_path=str(tmp_path / "ldm_tokenizer"))
    assert load_model(cfg).prediction_type == "v_prediction"


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_training_in_place_keeps_every_weight_and_restores_the_model(tmp_path, color_data, family):
    model = build_tiny_sd2_ldm(tmp_path) if family == "sd2" else build_tiny_sdxl_sgm(tmp_path)
    saved = snapshot(model)
    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "out", max_steps=3, train_text_encoder=True,
                      gradient_checkpointing=True)
    peek = MidRunPeek(model)
    result = train(cfg, [peek], bundle=in_place_bundle(model, name="tiny"))
    with safe_open(str(result.lora_path), "pt") as f:
        assert {k.split("_")[1] for k in f.keys()} == ({"unet", "te"} if family == "sd2" else {"unet", "te1", "te2"})
        assert f.metadata()["ss_base_model_version"] == ("sd_v2" if family == "sd2" else "sdxl_base_v1-0")
    peek.assert_no_base_weight_moved(saved)
    assert any(n.endswith(".attn") for n in peek.forwards)  # OpenCLIP attention ran with its LoRA
    assert_restored(model, saved)


# ---------------------------------------------------------------------------- SDXL
def test_sdxl_webui_model_is_recognised_and_matches_the_converted_file(tmp_path, sdxl_sgm, wide_data):
    bundle = in_place_bundle(sdxl_sgm, name="tiny-sdxl")
    assert isinstance(bundle, A1111SDXLBundle) and bundle.family.name == "sdxl"
    path = save_sdxl_single_file(sdxl_sgm, tmp_path / "models" / "tiny-sdxl.safetensors")
    cfg = make_config(path, wide_data, tmp_path / "out", tokenizer_path=str(tmp_path / "sgm_tokenizer"),
                      resolution=64, min_bucket_reso=64, max_bucket_reso=128, gradient_checkpointing=False,
                      train_text_encoder=True)
    converted = load_model(cfg)
    assert converted.family.name == "sdxl"
    names, losses, steps = same_lora_same_loss(tmp_path, cfg, [bundle, converted], ["unet", "te1", "te2"])
    assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj" in names
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc2" in names
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q" in names
    assert "lora_unet_middle_block_1_proj_out" in names and "lora_unet_output_blocks_3_1_proj_in" in names
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert steps[0] == pytest.approx(steps[1], abs=1e-5)


def test_sdxl_conditioning_comes_from_the_models_embedders(tmp_path, sdxl_sgm):
    from lora_trainer.data.dataset import ImageInfo

    bundle = in_place_bundle(sdxl_sgm)
    cond = bundle.encode_captions(["a red image", "a blue image"])
    assert cond["crossattn"].shape == (2, 77, 64) and cond["vector"].shape == (2, 32)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 700])
    same = [ImageInfo((64, 64), (0, 0), (64, 64))] * 2
    other = [ImageInfo((640, 320), (16, 0), (64, 64))] * 2
    with torch.no_grad():
        assert torch.equal(bundle.predict(x, t, cond, same), bundle.predict(x, t, cond, None))
        assert (bundle.predict(x, t, cond, same) - bundle.predict(x, t, cond, other)).abs().max() > 1e-5

