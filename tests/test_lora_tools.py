"""LoRA tools on a tiny real ldm checkpoint: merge into the checkpoint, combine LoRAs, resize rank.

Merge is checked against the LoRAs applied at runtime to the converted (diffusers) base model, twice:
by forward hooks written here (every stack) and by diffusers' own `load_lora_weights` (peft backend only).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_trainer.cli import main
from lora_trainer.errors import LoraFormatError
from lora_trainer.formats.kohya import read_metadata
from lora_trainer.network.kohya_names import kohya_name, text_encoder_path
from lora_trainer.network.unet_paths import infer_layers_per_block, ldm_to_diffusers_unet_module
from lora_trainer.models import default_families
from lora_trainer.models.loading import load_bundle
from lora_trainer.models.sd1 import SD1_ORIGINAL_CONFIG
from lora_trainer.tiny import tiny_original_config
from lora_trainer.tools import LoraSource, combine_loras, merge_loras, parse_lora_arg, resize_lora
from lora_trainer.tools.deltas import read_modules

from ldm_tiny import build_tiny_ldm, import_ldm, save_single_file
from diffusers_check import diffusers_has_peft_backend

UNET_PREFIX = "model.diffusion_model."
# Kohya names of the tiny model (3 levels, 1 ResNet per level, attention on the first two).
LORA_A = ["lora_unet_down_blocks_0_attentions_0_proj_in",  # 1x1 conv
          "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
          "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
          "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_0_proj",
          "lora_te_text_model_encoder_layers_1_mlp_fc1"] + \
    [f"lora_te_text_model_encoder_layers_0_self_attn_{p}_proj" for p in ("q", "k", "v", "out")]
# All four attention projections: diffusers 0.42 silently drops a kohya text-encoder q/k/v module when
# the file has no out_proj module (its old-format detection looks for `to_out_lora`); kohya writes all four.
LORA_B = ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",  # also in A
          "lora_unet_down_blocks_0_resnets_0_conv1",  # LoCon 3x3
          "lora_unet_down_blocks_0_downsamplers_0_conv",  # LoCon 3x3, stride 2
          "lora_unet_down_blocks_1_resnets_0_conv_shortcut",  # 1x1 conv
          "lora_unet_mid_block_resnets_1_time_emb_proj",
          "lora_unet_up_blocks_0_upsamplers_0_conv",  # output_blocks.1.1.conv (level without attention)
          "lora_unet_up_blocks_1_upsamplers_0_conv",  # output_blocks.3.2.conv
          "lora_unet_up_blocks_1_resnets_1_conv2",
          "lora_te_text_model_encoder_layers_1_self_attn_out_proj"]
WEIGHTS = (0.8, 0.5)


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


def random_lora(bundle, names, rank, alpha, seed, path: Path) -> Path:
    """A kohya file with random down/up for `names` (LoCon down [r, in, kh, kw] on convs)."""
    g = torch.Generator().manual_seed(seed)
    layers = runtime_layers(bundle)
    tensors = {}
    for name in names:
        w = layers[name].weight
        tensors[f"{name}.lora_down.weight"] = torch.randn((rank,) + tuple(w.shape[1:]), generator=g) * 0.2
        tensors[f"{name}.lora_up.weight"] = torch.randn((w.shape[0], rank) + (1,) * (w.dim() - 2), generator=g) * 0.2
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path), metadata={"ss_network_dim": str(rank), "ss_output_name": path.stem,
                                            "ss_base_model_version": "sd_v1", "ss_steps": "123"})
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory, base_bundle):
    tmp = tmp_path_factory.mktemp("loras")
    return (random_lora(base_bundle, LORA_A, rank=4, alpha=2, seed=1, path=tmp / "a.safetensors"),
            random_lora(base_bundle, LORA_B, rank=3, alpha=None, seed=2, path=tmp / "b.safetensors"))


def apply_at_runtime(bundle, files_and_weights):
    """Forward hooks adding weight * alpha / r * up(down(x)) to each patched layer's output."""
    layers, handles = runtime_layers(bundle), []
    for path, weight in files_and_weights:
        for name, f in read_modules(load_file(str(path)), path.name).items():
            module = layers[name]

            def hook(mod, args, output, f=f, weight=weight):
                x = args[0]
                if isinstance(mod, torch.nn.Conv2d):
                    h = F.conv2d(x, f.down, stride=mod.stride, padding=mod.padding, dilation=mod.dilation)
                    return output + weight * f.scale * F.conv2d(h, f.up)
                return output + weight * f.scale * F.linear(F.linear(x, f.down), f.up)

            handles.append(module.register_forward_hook(hook))
    return handles


@torch.no_grad()
def model_outputs(bundle, unet=None, text_encoder=None):
    g = torch.Generator().manual_seed(0)
    latents, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    ids = bundle.tokenize(["a red image", "the green and blue"])
    return ((unet or bundle.unet)(latents, torch.tensor([10, 700]), encoder_hidden_states=context).sample,
            (text_encoder or bundle.text_encoder)(ids)[0])


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
    names = [c.kohya_name(p) for c in base_bundle.network_components(True) for p in c.targets]
    assert len(names) > 40 and set(names) <= set(targets)
    layers = runtime_layers(base_bundle)  # every Linear / Conv2d: also ResNet and sampler convs, conv_in/out
    assert set(layers) == set(targets)
    for name, module in layers.items():
        assert torch.equal(sd[targets[name].key].reshape(module.weight.shape), module.weight), name


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
        unet_config = sfu.create_unet_diffusers_config_from_ldm(SD1_ORIGINAL_CONFIG, {}, image_size=512)
        unet = UNet2DConditionModel(**unet_config)
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
    assert all(shapes[targets[name].key] == shape for name, shape in locon.items())


# ---------------------------------------------------------------------------- merge
def test_merge_equals_runtime_application(tmp_path, tiny_ckpt, base_bundle, loras):
    out = tmp_path / "merged.safetensors"
    result = merge_loras(tiny_ckpt, [LoraSource(p, w) for p, w in zip(loras, WEIGHTS)], out)
    assert [m.modules for m in result.loras] == [len(LORA_A), len(LORA_B)]
    assert result.weights_changed == len(set(LORA_A) | set(LORA_B))
    base, merged = load_file(str(tiny_ckpt)), load_file(str(out))
    assert list(merged) == list(base) and all(merged[k].dtype == base[k].dtype for k in base)
    assert sum(not torch.equal(merged[k], base[k]) for k in base) == result.weights_changed
    meta = json.loads(read_metadata(out)["lora_trainer_merge"])
    assert [(e["file"], e["weight"]) for e in meta["loras"]] == [("a.safetensors", 0.8), ("b.safetensors", 0.5)]
    assert out.with_suffix(".yaml").read_text() == tiny_ckpt.with_suffix(".yaml").read_text()

    merged_out = model_outputs(_bundle(out, tiny_ckpt))
    handles = apply_at_runtime(base_bundle, zip(loras, WEIGHTS))
    try:
        runtime_out = model_outputs(base_bundle)
    finally:
        for h in handles:
            h.remove()
    plain_out = model_outputs(base_bundle)
    for merged_t, runtime_t, plain_t in zip(merged_out, runtime_out, plain_out):
        diff, effect = (merged_t - runtime_t).abs().max().item(), (runtime_t - plain_t).abs().max().item()
        print(f"merge vs runtime hooks: max abs diff {diff:.2e} (LoRA effect {effect:.2e})")
        assert diff < 1e-4 and effect > 1e-2


@pytest.mark.skipif(not diffusers_has_peft_backend(),
                    reason="diffusers' load_lora_weights needs its peft backend (transformers > 4.33); "
                           "the forward-hook comparison above still runs")
def test_merge_equals_diffusers_load_lora_weights(tmp_path, tiny_ckpt, loras):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    out = tmp_path / "merged.safetensors"
    merge_loras(tiny_ckpt, [LoraSource(p, w) for p, w in zip(loras, WEIGHTS)], out)
    base = _bundle(tiny_ckpt, tiny_ckpt)
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    for path, name in zip(loras, ("a", "b")):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(["a", "b"], adapter_weights=list(WEIGHTS))
    patched = sum(isinstance(m, LoraLayer) for part in (pipe.unet, pipe.text_encoder) for m in part.modules())
    assert patched == len(set(LORA_A) | set(LORA_B))  # diffusers read every module, the LoCon convs too
    runtime_out = model_outputs(base, pipe.unet, pipe.text_encoder)
    for merged_t, runtime_t in zip(model_outputs(_bundle(out, tiny_ckpt)), runtime_out):
        diff = (merged_t - runtime_t).abs().max().item()
        print(f"merge vs diffusers load_lora_weights: max abs diff {diff:.2e}")
        assert diff < 1e-4


def test_merge_casts_to_the_requested_precision(tmp_path, tiny_ckpt, loras):
    out = tmp_path / "half.safetensors"
    merge_loras(tiny_ckpt, [loras[0]], out, precision="fp16")
    base, merged = load_file(str(tiny_ckpt)), load_file(str(out))
    assert {merged[k].dtype for k in base if base[k].is_floating_point()} == {torch.float16}
    assert all(merged[k].dtype == v.dtype for k, v in base.items() if not v.is_floating_point())


def test_linear_and_1x1_conv_forms_of_a_module_cancel_out(tmp_path, tiny_ckpt, loras):
    """A LoRA with proj_in in Linear form (as SD2 files have it) fits SD1's 1x1 conv; +0.8 and -0.8 cancel."""
    flat = {k: v.flatten(1) if v.dim() == 4 else v for k, v in load_file(str(loras[0])).items()}
    save_file(flat, str(tmp_path / "flat.safetensors"))
    out = tmp_path / "cancelled.safetensors"
    merge_loras(tiny_ckpt, [LoraSource(loras[0], 0.8), LoraSource(tmp_path / "flat.safetensors", -0.8)], out)
    base, merged = load_file(str(tiny_ckpt)), load_file(str(out))
    assert max((merged[k] - base[k]).abs().max().item() for k in base if base[k].is_floating_point()) < 1e-6


def test_a_lora_that_does_not_fit_is_refused_naming_the_first_bad_key(tmp_path, tiny_ckpt, loras):
    tensors = load_file(str(loras[0]))
    bad = {"lora_unet_up_blocks_5_attentions_0_proj_in", "lora_unet_zz_unknown"}
    for name in bad:
        tensors[f"{name}.lora_down.weight"] = torch.zeros(4, 32)
        tensors[f"{name}.lora_up.weight"] = torch.zeros(32, 4)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    out = tmp_path / "out" / "merged.safetensors"
    with pytest.raises(LoraFormatError, match="lora_unet_up_blocks_5_attentions_0_proj_in.lora_down.weight"):
        merge_loras(tiny_ckpt, [loras[0], tmp_path / "bad.safetensors"], out)
    assert not out.parent.exists() or not any(out.parent.iterdir())

    wrong = load_file(str(loras[0]))  # right name, wrong shape
    wrong["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 48)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(LoraFormatError, match=r"self_attn_q_proj.lora_down.weight does not fit .*\[32, 48\]"):
        merge_loras(tiny_ckpt, [tmp_path / "wrong.safetensors"], out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_other_formats_are_refused_by_name(tmp_path, tiny_ckpt):
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_y.lora_mid.weight": torch.zeros(2, 2, 3, 3)}, str(tmp_path / "tucker.safetensors"))
    with pytest.raises(LoraFormatError, match="lora_unet_y.lora_mid.weight' is LoCon with a Tucker"):
        merge_loras(tiny_ckpt, [tmp_path / "tucker.safetensors"], tmp_path / "m.safetensors")


def random_lycoris(bundle, names, algo: str, seed: int, path: Path) -> Path:
    """A LyCORIS file with random factors for `names` in the layout the hosts read (LoHa, LoKr with a
    low-rank w2, or LoCon with dora_scale)."""
    from lora_trainer.adapters.lokr import factorization

    g = torch.Generator().manual_seed(seed)
    layers, tensors, r = runtime_layers(bundle), {}, 2
    for name in names:
        w = layers[name].weight
        out, inp, flat = w.shape[0], w.shape[1], w[0].numel()
        rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
        if algo == "loha":
            parts = {"hada_w1_a": rnd(out, r), "hada_w1_b": rnd(r, flat), "hada_w2_a": rnd(out, r), "hada_w2_b": rnd(r, flat)}
        elif algo == "lokr":
            (o1, o2), (i1, i2) = factorization(out, 4), factorization(inp, 4)
            parts = {"lokr_w1": rnd(o1, i1), "lokr_w2_a": rnd(o2, r), "lokr_w2_b": rnd(r, i2 * flat // inp)}
        else:
            parts = {"lora_down.weight": rnd(r, *w.shape[1:]), "lora_up.weight": rnd(out, r, *(1,) * (w.dim() - 2)),
                     "dora_scale": w.detach().transpose(0, 1).reshape(inp, -1).norm(dim=1).reshape(1, inp, *(1,) * (w.dim() - 2))
                     * (1 + rnd(1, inp, *(1,) * (w.dim() - 2)).abs())}
        tensors.update({f"{name}.{k}": v for k, v in parts.items()})
        tensors[f"{name}.alpha"] = torch.tensor(1.5)
    save_file(tensors, str(path), metadata={"ss_network_module": "lycoris.kohya",
                                            "ss_network_args": json.dumps({"algo": algo})})
    return path


@pytest.mark.parametrize("algo", ["loha", "lokr", "locon-dora"])
def test_merge_of_lycoris_kinds_equals_the_hosts_formulas(tmp_path, tiny_ckpt, base_bundle, algo):
    """Merged weight = base + what A1111 v1.10.1 computes from the file (tests/a1111_lyco_reference.py, which
    shares no code with the tools), 3x3 convs included; combine and resize refuse what has no LoRA factors."""
    from a1111_lyco_reference import calc_updown

    path = random_lycoris(base_bundle, LORA_B, algo, 3, tmp_path / f"{algo}.safetensors")
    out = tmp_path / "merged.safetensors"
    merge_loras(tiny_ckpt, [LoraSource(path, 0.7)], out)
    base, merged, tensors = load_file(str(tiny_ckpt)), load_file(str(out)), load_file(str(path))
    targets = default_families().get("sd1").checkpoint_lora_keys({k: tuple(v.shape) for k, v in base.items()})
    for name in LORA_B:
        parts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == name}
        weight = base[targets[name].key]
        want = weight + calc_updown(parts, weight, multiplier=0.7)
        assert (merged[targets[name].key] - want).norm() / (want - weight).norm() < 1e-5, name
    with pytest.raises(LoraFormatError, match="no low-rank factors"):
        resize_lora(path, 1, tmp_path / "small.safetensors")
    assert not (tmp_path / "small.safetensors").exists()


# ---------------------------------------------------------------------------- combine / resize
def deltas_of(path: Path, weight: float = 1.0):
    return {n: f.delta(weight, torch.float64) for n, f in read_modules(load_file(str(path)), path.name).items()}


def test_exact_combine_is_the_weighted_sum_of_deltas(tmp_path, loras):
    out = tmp_path / "ab.safetensors"
    result = combine_loras([LoraSource(p, w) for p, w in zip(loras, WEIGHTS)], out)
    expected = {}
    for path, weight in zip(loras, WEIGHTS):
        for name, delta in deltas_of(path, weight).items():
            expected[name] = expected.get(name, 0) + delta
    got = deltas_of(out)
    assert set(got) == set(expected)
    err = max((got[n] - expected[n]).abs().max().item() for n in got)
    print(f"exact combine: max abs error {err:.2e}")
    assert err < 1e-5
    shared = next(m for m in result.modules if m.sources == 2)
    assert shared.rank == 7 and result.energy == 1.0
    meta = read_metadata(out)
    assert meta["ss_merged_from"] == "a.safetensors, b.safetensors" and meta["ss_steps"] == "123"
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "7" and meta["ss_output_name"] == "ab"


def test_combine_to_a_rank_reports_the_kept_energy(tmp_path, loras):
    out = tmp_path / "ab2.safetensors"
    result = combine_loras([LoraSource(p, w) for p, w in zip(loras, WEIGHTS)], out, rank=2)
    expected = {}
    for path, weight in zip(loras, WEIGHTS):
        for name, delta in deltas_of(path, weight).items():
            expected[name] = expected.get(name, 0) + delta
    got = deltas_of(out)
    residual = sum((got[n] - expected[n]).pow(2).sum().item() for n in got)
    total = sum(d.pow(2).sum().item() for d in expected.values())
    print(f"combine to rank 2: kept energy {result.energy:.4f}")
    assert max(m.rank for m in result.modules) == 2
    assert 0 < result.energy < 1 and result.energy == pytest.approx(1 - residual / total, abs=1e-5)


def test_resize_is_lossless_at_full_rank_and_the_error_falls_with_rank(tmp_path, loras):
    source = deltas_of(loras[0])
    errors = []
    for rank in (1, 2, 3, 4, 8):
        out = tmp_path / f"a_r{rank}.safetensors"
        result = resize_lora(loras[0], rank, out)
        got = deltas_of(out)
        measured = math.sqrt(sum((got[n] - source[n]).pow(2).sum().item() for n in got) /
                             sum(d.pow(2).sum().item() for d in source.values()))
        assert result.error == pytest.approx(measured, abs=1e-5)
        assert all(m.new_rank == min(rank, 4) for m in result.modules)
        errors.append(result.error)
    print("resize relative error by rank 1, 2, 3, 4, 8: " + ", ".join(f"{e:.4f}" for e in errors))
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 1e-6 and errors[4] < 1e-6
    meta = read_metadata(tmp_path / "a_r2.safetensors")
    assert meta["ss_network_dim"] == "2" and meta["ss_steps"] == "123"
    assert json.loads(meta["lora_trainer_resize"])["source"]["file"] == "a.safetensors"
    with safe_open(str(tmp_path / "a_r2.safetensors"), "pt") as fh:
        assert fh.metadata()["sshs_model_hash"]


# ---------------------------------------------------------------------------- arguments and CLI
@pytest.mark.parametrize("text,path,weight", [
    ("a.safetensors", "a.safetensors", 1.0),
    ("a.safetensors:0.8", "a.safetensors", 0.8),
    ("dir/a.safetensors:-0.5", "dir/a.safetensors", -0.5),
    ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", 1.0),
    ("C:\\loras\\a.safetensors:1.5", "C:\\loras\\a.safetensors", 1.5),
    ("a:b.safetensors", "a:b.safetensors", 1.0),
])
def test_lora_arguments(text, path, weight):
    assert parse_lora_arg(text) == LoraSource(Path(path), weight)


def test_cli_commands(tmp_path, tiny_ckpt, loras, capsys):
    a, b = (str(p) for p in loras)
    assert main(["resize", "--lora", a, "--rank", "2", "--out", str(tmp_path / "r.safetensors")]) == 0
    assert main(["combine", "--lora", f"{a}:0.8", "--lora", f"{b}:0.5", "--rank", "3",
                 "--out", str(tmp_path / "c.safetensors")]) == 0
    assert main(["merge", "--base", str(tiny_ckpt), "--lora", f"{a}:0.8", "--out", str(tmp_path / "m.safetensors"),
                 "--precision", "fp16"]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "kept energy" in printed and "m.safetensors" in printed
    assert main(["merge", "--base", str(tiny_ckpt), "--lora", a, "--out", str(tmp_path / "m.safetensors")]) == 1
    assert "already exists" in capsys.readouterr().err
