"""SD2.x: kohya names on the full-size architecture (meta device), epsilon/v detection, v-prediction training
against the velocity, and a tiny SD2-shaped model read back by diffusers' StableDiffusionPipeline."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lora_trainer.engine.diffusion import add_noise, per_sample_mse, training_target
from lora_trainer.engine.run import LoraRun
from lora_trainer.models import default_families
from lora_trainer.models.loading import alphas_cumprod_from
from lora_trainer.models.sd2 import SD2_ORIGINAL_CONFIG, looks_like_v_prediction

from conftest import evaluation_loss, make_config
from diffusers_check import assert_diffusers_reproduces, needs_diffusers_peft, train_and_render
from test_training import EVAL_TIMESTEPS, sd_pipeline
from tiny_families import build_tiny_sd2

LEAVES = ["proj_in", "proj_out"] + [f"transformer_blocks_0_{a}_{p}" for a in ("attn1", "attn2")
                                     for p in ("to_q", "to_k", "to_v", "to_out_0")] + \
         ["transformer_blocks_0_ff_net_0_proj", "transformer_blocks_0_ff_net_2"]


def expected_sd2_unet_names():
    """SD2's UNet has SD1's layout (attention on levels 0-2, depth 1): 16 transformers x 12 modules."""
    blocks = [f"down_blocks_{i}_attentions_{j}" for i in range(3) for j in range(2)] + ["mid_block_attentions_0"]
    blocks += [f"up_blocks_{i}_attentions_{j}" for i in range(1, 4) for j in range(3)]
    return {f"lora_unet_{b}_{leaf}" for b in blocks for leaf in LEAVES}


def expected_sd2_te_names():
    """OpenCLIP ViT-H has 24 layers; SD2 uses 23 (penultimate), as kohya's and diffusers' SD2 encoders do."""
    leaves = [f"self_attn_{p}_proj" for p in ("q", "k", "v", "out")] + ["mlp_fc1", "mlp_fc2"]
    return {f"lora_te_text_model_encoder_layers_{n}_{leaf}" for n in range(23) for leaf in leaves}


@pytest.fixture(scope="module")
def full_size_sd2_bundle():
    from lora_trainer.models.architecture import build_sd_architecture

    family = default_families().get("sd2")
    parts = build_sd_architecture(SD2_ORIGINAL_CONFIG, "meta", family=family)
    return family.make_bundle({**parts, "tokenizer": None, "alphas_cumprod": torch.ones(1000),
                               "prediction_type": "epsilon"}, "meta-sd2", 1)


def test_sd2_unet_has_the_192_kohya_modules_with_linear_projections(full_size_sd2_bundle):
    (unet,) = full_size_sd2_bundle.network_components(train_text_encoder=False)
    names = [unet.kohya_name(p) for p in unet.targets]
    assert len(names) == 192 and set(names) == expected_sd2_unet_names()
    assert isinstance(unet.module.get_submodule("down_blocks.0.attentions.0.proj_in"), torch.nn.Linear)


def test_sd2_text_encoder_has_the_138_kohya_modules(full_size_sd2_bundle):
    _, te = full_size_sd2_bundle.network_components(train_text_encoder=True)
    names = [te.kohya_name(p) for p in te.targets]
    assert len(names) == 138 and set(names) == expected_sd2_te_names()
    assert te.module.config.hidden_size == 1024 and te.module.config.hidden_act == "gelu"


def test_sd2_metadata_values():
    family = default_families().get("sd2")
    assert family.is_v2 and family.sd_version == "SD2"
    assert family.base_model_version("epsilon") == "sd_v2" and family.base_model_version("v_prediction") == "sd_v2_v"
    assert family.modelspec_architecture_for("epsilon") == "stable-diffusion-v2-512/lora"
    assert family.modelspec_architecture_for("v_prediction") == "stable-diffusion-v2-768-v/lora"


class _FakeUNet(torch.nn.Module):
    """Answers the WebUI's v-test like a v-model (about -x0) or an epsilon model (about the noise)."""

    def __init__(self, v: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.v = v
        self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 8})()

    def forward(self, x, t, encoder_hidden_states):
        return type("O", (), {"sample": -3 * x if self.v else x})()


def test_v_prediction_is_detected_like_the_webui_does():
    assert looks_like_v_prediction(_FakeUNet(v=True))
    assert not looks_like_v_prediction(_FakeUNet(v=False))


def test_the_v_target_is_the_velocity():
    ac = alphas_cumprod_from(0.00085, 0.012, 1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    a = ac[t].view(-1, 1, 1, 1)
    v = training_target(x0, noise, t, ac, "v_prediction")
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0)
    assert torch.equal(training_target(x0, noise, t, ac, "epsilon"), noise)
    # x0 can be recovered from (x_t, v): x0 = sqrt(a) x_t - sqrt(1 - a) v
    assert torch.allclose(a.sqrt() * add_noise(x0, noise, t, ac) - (1 - a).sqrt() * v, x0, atol=1e-5)


# ---------------------------------------------------------------------------- tiny models, end to end
@pytest.fixture(scope="module")
def tiny_sd2_dir(tmp_path_factory):
    return build_tiny_sd2(tmp_path_factory.mktemp("models") / "tiny-sd2", seed=0)


@pytest.fixture(scope="module")
def tiny_sd2_v_dir(tmp_path_factory):
    return build_tiny_sd2(tmp_path_factory.mktemp("models") / "tiny-sd2-v", seed=1, prediction_type="v_prediction")


def test_a_v_model_trains_against_the_velocity(tmp_path, tiny_sd2_v_dir, color_data):
    cfg = make_config(tiny_sd2_v_dir, color_data, tmp_path / "out", max_steps=100, learning_rate=3e-3)
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    bundle = run.bundle
    assert bundle.family.name == "sd2" and bundle.prediction_type == "v_prediction"

    # the engine's loss is the MSE to the velocity, not to the noise
    batch = trainer.dataset.epoch_batches(0, cfg.seed, cfg.batch_size)[0]
    noise, t = trainer.step_noise(0, 0, batch)
    with torch.no_grad():
        loss = trainer.batch_loss(batch, noise, t)
        latents = trainer.latents_for(batch)
        pred = bundle.predict(add_noise(latents, noise, t, bundle.alphas_cumprod), t, trainer.conditioning_for(batch))
        v = training_target(latents, noise, t, bundle.alphas_cumprod, "v_prediction")
    assert torch.allclose(loss, per_sample_mse(pred, v), atol=1e-6)
    assert not torch.allclose(loss, per_sample_mse(pred, noise), atol=1e-3)

    images = list(range(len(trainer.dataset)))
    before = evaluation_loss(trainer, images, EVAL_TIMESTEPS)
    run.train()
    after = evaluation_loss(trainer, images, EVAL_TIMESTEPS)
    path = run.save_final()
    run.close()
    print(f"v-prediction evaluation loss {before:.4f} -> {after:.4f}")
    assert after < 0.85 * before
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["ss_v_parameterization"] == "True" and meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"


def test_prediction_type_in_the_config_overrides_the_model(tmp_path, tiny_sd2_v_dir, color_data):
    from lora_trainer.engine.run import load_model

    cfg = make_config(tiny_sd2_v_dir, color_data, tmp_path / "out", prediction_type="epsilon")
    assert load_model(cfg).prediction_type == "epsilon"


@needs_diffusers_peft
@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_saved_sd2_lora_loads_in_diffusers_and_reproduces_the_trained_model(tmp_path, tiny_sd2_dir, color_data,
                                                                           train_text_encoder):
    from diffusers import StableDiffusionPipeline

    cfg = make_config(tiny_sd2_dir, color_data, tmp_path / "out", max_steps=20, lora_rank=4, lora_alpha=2,
                      train_text_encoder=train_text_encoder, learning_rate=5e-3)
    path, trained = train_and_render(cfg, lambda b: sd_pipeline(b.unet, b.vae, b.text_encoder, b.tokenizer))
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_base_model_version"] == "sd_v2" and meta["ss_v2"] == "True"
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys) == train_text_encoder

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd2_dir), safety_checker=None)
    assert_diffusers_reproduces(sd_pipeline(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer), path, trained)


@pytest.mark.parametrize("open_clip,kohya", [
    ("transformer.resblocks.0.attn.q_proj", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
    ("transformer.resblocks.22.attn.out_proj", "lora_te_text_model_encoder_layers_22_self_attn_out_proj"),
    ("transformer.resblocks.5.mlp.c_fc", "lora_te_text_model_encoder_layers_5_mlp_fc1"),
    ("transformer.resblocks.5.mlp.c_proj", "lora_te_text_model_encoder_layers_5_mlp_fc2"),
])
def test_open_clip_paths_get_the_converted_encoders_kohya_names(open_clip, kohya):
    from lora_trainer.network.kohya_names import kohya_name, open_clip_text_encoder_path

    assert kohya_name("lora_te", open_clip_text_encoder_path(open_clip)) == kohya
