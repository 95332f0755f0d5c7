"""SDXL: kohya names on the full-size architecture (meta device), detection, time ids, and a tiny SDXL-shaped
model trained and read back by diffusers' StableDiffusionXLPipeline."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lora_trainer.data.dataset import ImageInfo
from lora_trainer.engine.run import LoraRun, load_model
from lora_trainer.network.kohya_names import diffusers_to_ldm_unet_path, ldm_to_diffusers_unet_path
from lora_trainer.models import default_families
from lora_trainer.models.sdxl import SDXL_ORIGINAL_CONFIG
from lora_trainer.models.sdxl_bundle import time_ids

from conftest import make_config
from diffusers_check import assert_diffusers_reproduces, ddim, needs_diffusers_peft, train_and_render
from tiny_families import build_tiny_sdxl

BLOCK_LEAVES = [f"{a}_{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out_0")] + \
               ["ff_net_0_proj", "ff_net_2"]


def expected_sdxl_unet_names():
    """kohya's SDXL module list, written from the sgm UNet's structure (not from our path maps)."""
    depth = {**{f"input_blocks_{i}_1": 2 for i in (4, 5)}, **{f"input_blocks_{i}_1": 10 for i in (7, 8)},
             "middle_block_1": 10, **{f"output_blocks_{i}_1": 10 for i in (0, 1, 2)},
             **{f"output_blocks_{i}_1": 2 for i in (3, 4, 5)}}
    names = set()
    for block, n in depth.items():
        names |= {f"lora_unet_{block}_{leaf}" for leaf in ("proj_in", "proj_out")}
        names |= {f"lora_unet_{block}_transformer_blocks_{t}_{leaf}" for t in range(n) for leaf in BLOCK_LEAVES}
    return names


def expected_sdxl_te_names():
    leaves = [f"self_attn_{p}_proj" for p in ("q", "k", "v", "out")] + ["mlp_fc1", "mlp_fc2"]
    return ({f"lora_te1_text_model_encoder_layers_{n}_{leaf}" for n in range(12) for leaf in leaves} |
            {f"lora_te2_text_model_encoder_layers_{n}_{leaf}" for n in range(32) for leaf in leaves})


@pytest.fixture(scope="module")
def full_size_sdxl_bundle():
    from lora_trainer.models.architecture import build_sd_architecture

    family = default_families().get("sdxl")
    parts = build_sd_architecture(SDXL_ORIGINAL_CONFIG, "meta", family=family)
    return family.make_bundle({**parts, "tokenizer": None, "tokenizer_2": None, "alphas_cumprod": torch.ones(1000),
                               "prediction_type": "epsilon"}, "meta-sdxl", 1)


def test_sdxl_unet_has_the_722_kohya_modules(full_size_sdxl_bundle):
    (unet,) = full_size_sdxl_bundle.network_components(train_text_encoder=False)
    names = [unet.kohya_name(p) for p in unet.targets]
    assert len(names) == 722 and set(names) == expected_sdxl_unet_names()
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names


def test_sdxl_text_encoders_have_the_264_kohya_modules(full_size_sdxl_bundle):
    comps = full_size_sdxl_bundle.network_components(train_text_encoder=True)
    assert [c.role for c in comps] == ["unet", "text_encoder", "text_encoder_2"]
    names = [c.kohya_name(p) for c in comps[1:] for p in c.targets]
    assert len(names) == 264 and set(names) == expected_sdxl_te_names()


@pytest.mark.parametrize("sgm,diffusers", [
    ("input_blocks.4.1.transformer_blocks.1.attn2.to_k", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
    ("input_blocks.8.1.transformer_blocks.9.ff.net.2", "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2"),
    ("middle_block.1.transformer_blocks.7.attn1.to_out.0", "mid_block.attentions.0.transformer_blocks.7.attn1.to_out.0"),
    ("output_blocks.2.1.proj_out", "up_blocks.0.attentions.2.proj_out"),
    ("output_blocks.5.1.transformer_blocks.1.attn1.to_v", "up_blocks.1.attentions.2.transformer_blocks.1.attn1.to_v"),
])
def test_sgm_paths_with_deep_transformers_and_a_level_without_attention(sgm, diffusers):
    assert ldm_to_diffusers_unet_path(sgm, layers_per_block=2) == diffusers
    assert diffusers_to_ldm_unet_path(diffusers, layers_per_block=2) == sgm


def test_full_size_unet_config_is_sdxl_base():
    family = default_families().get("sdxl")
    cfg = family.unet_config(SDXL_ORIGINAL_CONFIG, {})
    assert cfg["addition_embed_type"] == "text_time" and cfg["addition_time_embed_dim"] == 256
    assert cfg["projection_class_embeddings_input_dim"] == 2816 and cfg["cross_attention_dim"] == 2048
    assert cfg["transformer_layers_per_block"] == [1, 2, 10] and cfg["attention_head_dim"] == [5, 10, 20]


def test_time_ids_come_from_each_image():
    infos = [ImageInfo((600, 800), (12, 0), (512, 768)), ImageInfo((1024, 1024), (0, 0), (1024, 1024))]
    assert time_ids(infos, 2, 0, 0).tolist() == [[600, 800, 12, 0, 512, 768], [1024, 1024, 0, 0, 1024, 1024]]
    assert time_ids(None, 1, 64, 128).tolist() == [[64, 128, 0, 0, 64, 128]]


def test_family_metadata_values():
    family = default_families().get("sdxl")
    assert family.base_model_version("epsilon") == "sdxl_base_v1-0"
    assert family.modelspec_architecture_for("epsilon") == "stable-diffusion-xl-v1-base/lora"
    assert not family.is_v2 and family.gradient_checkpointing_by_default


# ---------------------------------------------------------------------------- tiny model, end to end
@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl", seed=0)


def _sdxl_pipeline(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=ddim())


def test_tiny_sdxl_folder_is_detected_and_writes_sdxl_metadata(tmp_path, tiny_sdxl_dir, color_data):
    cfg = make_config(tiny_sdxl_dir, color_data, tmp_path / "out", max_steps=2, train_text_encoder=True,
                      text_encoder_lr=2e-4, text_encoder_2_lr=1e-4)
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    assert run.bundle.family.name == "sdxl"
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 2e-4, 1e-4]  # unet, te1, te2
    assert trainer.config.gradient_checkpointing == "auto" and run.bundle.unet.is_gradient_checkpointing
    run.train()
    path = run.save_final()
    run.close()
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in keys}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_down.weight" in keys
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_gradient_checkpointing"] == "True"


def test_an_sdxl_run_renders_its_sample_images(tmp_path, tiny_sdxl_dir, color_data):
    """Samples go through StableDiffusionXLPipeline (pooled and size conditioning); the SD pipeline crashed."""
    from PIL import Image

    cfg = make_config(tiny_sdxl_dir, color_data, tmp_path / "out", max_steps=2,
                      sample_prompts=["a red image --s 2 --w 64 --h 96"], sample_every_n_steps=2)
    run = LoraRun(cfg, tensorboard=False)
    run.setup()
    try:
        run.train()
    finally:
        run.close()
    samples = sorted((tmp_path / "out" / "samples").glob("*.png"))
    assert len(samples) == 1 and Image.open(samples[0]).size == (64, 96)


@needs_diffusers_peft
@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_saved_sdxl_lora_loads_in_diffusers_and_reproduces_the_trained_model(tmp_path, tiny_sdxl_dir, color_data,
                                                                             train_text_encoder):
    from diffusers import StableDiffusionXLPipeline

    cfg = make_config(tiny_sdxl_dir, color_data, tmp_path / "out", max_steps=20, lora_rank=4, lora_alpha=2,
                      train_text_encoder=train_text_encoder, learning_rate=5e-3)
    path, trained = train_and_render(cfg, lambda b: _sdxl_pipeline(b.unet, b.vae, b.text_encoder, b.text_encoder_2,
                                                                   b.tokenizer, b.tokenizer_2))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    base = _sdxl_pipeline(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2)
    assert_diffusers_reproduces(base, path, trained)


def test_loss_uses_per_image_time_ids(tmp_path, tiny_sdxl_dir, color_data):
    cfg = make_config(tiny_sdxl_dir, color_data, tmp_path / "out")
    bundle = load_model(cfg)
    bundle.prepare(torch.device("cpu"), torch.float32, False, False)
    cond = bundle.encode_captions(["a red image"])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    a = bundle.predict(x, t, cond, [ImageInfo((64, 64), (0, 0), (64, 64))])
    b = bundle.predict(x, t, cond, [ImageInfo((512, 256), (32, 0), (64, 64))])
    assert cond["crossattn"].shape == (1, 77, 64) and cond["pooled"].shape == (1, 32)
    assert (a - b).abs().max() > 1e-4


def test_plan_builds_sdxl_from_a_folder(tmp_path, tiny_sdxl_dir, color_data):
    from lora_trainer.planner import estimate

    plan = estimate(make_config(tiny_sdxl_dir, color_data, tmp_path / "o"))  # (transformers 4.30's CLIP cannot run on meta)
    assert plan.gradient_checkpointing and plan.activations > 0 and plan.lora_state > 0


def test_sdxl_defaults_are_planned_to_fit_12_gb_at_1024_px(tmp_path, color_data):
    """The planner's estimate (meta device, bf16 on CUDA): defaults fit 12 GiB, without checkpointing they do not."""
    from lora_trainer.models.architecture import build_sd_architecture
    from lora_trainer.planner import GiB, estimate

    family = default_families().get("sdxl")
    peaks = {}
    for checkpointing in ("auto", False):
        parts = {**build_sd_architecture(SDXL_ORIGINAL_CONFIG, "meta", family=family), "family": family}
        cfg = make_config(tmp_path, color_data, tmp_path / "o", resolution=1024, min_bucket_reso=512, max_bucket_reso=2048, batch_size=1, lora_rank=16,
                          mixed_precision="bf16", gradient_checkpointing=checkpointing, device="auto")
        peaks[checkpointing] = estimate(cfg, parts=parts, device=torch.device("cuda")).peak / GiB
    print(f"planned SDXL peak at 1024 px: {peaks}")
    assert peaks["auto"] < 11 < 12 < peaks[False]


def test_gradient_checkpointing_really_saves_activations(tmp_path, tiny_sdxl_dir, color_data):
    """diffusers 0.31 checkpoints only blocks in training mode: the bundle must make it happen there too."""
    from lora_trainer.adapters import make_spec
    from lora_trainer.network.network import AdapterNetwork
    from lora_trainer.planner import saved_activation_bytes

    saved = {}
    for checkpointing in (False, True):
        bundle = load_model(make_config(tiny_sdxl_dir, color_data, tmp_path / "o"))
        bundle.prepare(torch.device("cpu"), torch.float32, checkpointing, False)
        net = AdapterNetwork.inject(bundle.network_components(False), make_spec(4, 4))
        cond = bundle.encode_captions(["a red image"])
        x = torch.randn(1, 4, 8, 8)
        saved[checkpointing] = saved_activation_bytes(lambda: bundle.predict(x, torch.tensor([500]), cond),
                                                      (bundle.unet,))["total"]
        net.remove()
    assert saved[True] < 0.7 * saved[False]
