"""Build a randomly initialised, full-size SD1.5 or SDXL base checkpoint for testing against real WebUI hosts.

The result is one `.safetensors` file in the original (ldm / sgm) single-file layout that AUTOMATIC1111 and
Forge load like a downloaded checkpoint: `model.diffusion_model.*`, `first_stage_model.*`, and
`cond_stage_model.transformer.text_model.*` (SD1.5) or `conditioner.embedders.0.transformer.text_model.*` +
`conditioner.embedders.1.model.*` (SDXL; OpenCLIP bigG with packed `in_proj` attention). No download: the
modules are diffusers / transformers classes at their published sizes with their own random initialisation
(no layer is left at zero, so a LoRA can change the image), renamed to the original layout. Every renamed
part is checked by converting it back with diffusers' own ldm -> diffusers converters, which must return the
exact tensors that were saved.

    python tools/make_random_checkpoint.py sd15 models/Stable-diffusion/random_sd15.safetensors
    python tools/make_random_checkpoint.py sdxl models/Stable-diffusion/random_sdxl.safetensors --seed 1
    python tools/make_random_checkpoint.py clip-cache --hf-home ~/.cache/huggingface \
        --bpe .../open_clip/bpe_simple_vocab_16e6.txt.gz

`clip-cache` writes `openai/clip-vit-large-patch14` (config and tokenizer, no weights) into a Hugging Face
cache, which the WebUI's SD1/SDXL text encoders read offline; the vocabulary is rebuilt from the BPE file
that open_clip ships. Weights are saved in fp16 (like released checkpoints) unless `--dtype fp32`.
SDXL needs about 12 GiB of memory while building.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

Tensors = Dict[str, torch.Tensor]
# (diffusers prefix, original prefix, renames of the first name after the prefix)
Rule = Tuple[str, str, Dict[str, str]]

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), layers_per_block=2,
                 block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
              pad_token_id=1)
OPEN_CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                      num_hidden_layers=32, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
CLIP_L_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                     image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def unet_rules(config: Dict) -> List[Rule]:
    """Where each diffusers UNet block lives in the original `input_blocks` / `middle_block` / `output_blocks`."""
    per, levels = config["layers_per_block"], len(config["block_out_channels"])
    rules: List[Rule] = [("time_embedding.linear_1.", "time_embed.0.", {}), ("time_embedding.linear_2.", "time_embed.2.", {}),
                         ("add_embedding.linear_1.", "label_emb.0.0.", {}), ("add_embedding.linear_2.", "label_emb.0.2.", {}),
                         ("conv_in.", "input_blocks.0.0.", {}), ("conv_norm_out.", "out.0.", {}), ("conv_out.", "out.2.", {}),
                         ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET), ("mid_block.attentions.0.", "middle_block.1.", {}),
                         ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET)]
    for i in range(levels):
        for j in range(per):
            block = 1 + i * (per + 1) + j
            rules += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0.", UNET_RESNET),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1.", {})]
        if i < levels - 1:
            rules.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per + 1)}.0.op.", {}))
        for j in range(per + 1):
            block = i * (per + 1) + j
            rules += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0.", UNET_RESNET),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1.", {})]
        if i < levels - 1:
            layer = 2 if "CrossAttn" in config["up_block_types"][i] else 1
            rules.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (per + 1) + per}.{layer}.", {}))
    return rules


def vae_rules(config: Dict) -> List[Rule]:
    """The diffusers AutoencoderKL's blocks in the original encoder.down / decoder.up (reversed) layout."""
    per, levels = config["layers_per_block"], len(config["block_out_channels"])
    rules: List[Rule] = []
    for i in range(levels):
        rules += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", VAE_RESNET) for j in range(per)]
        rules += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.", VAE_RESNET)
                  for j in range(per + 1)]
        if i < levels - 1:
            rules += [(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", {}),
                      (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.", {})]
    for part in ("encoder", "decoder"):
        rules += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", VAE_RESNET),
                  (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", VAE_RESNET),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION),
                  (f"{part}.conv_norm_out.", f"{part}.norm_out.", {})]
    return rules


def rename(sd: Tensors, rules: List[Rule], prefix: str) -> Tensors:
    """Apply the longest matching rule to every key (keys no rule matches keep their name) and add `prefix`."""
    ordered = sorted(rules, key=lambda r: -len(r[0]))
    out = {}
    for key, value in sd.items():
        new = key
        for old, to, inner in ordered:
            if key.startswith(old):
                rest = key[len(old):]
                for name, replacement in inner.items():
                    if rest.startswith(name + "."):
                        rest = replacement + rest[len(name):]
                        break
                new = to + rest
                break
        out[prefix + new] = value
    return out


def vae_to_original(sd: Tensors, config: Dict) -> Tensors:
    """The VAE in ldm names; its mid-block attention projections become 1x1 convolutions as in ldm."""
    out = rename(sd, vae_rules(config), "first_stage_model.")
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and value.ndim == 2:
            out[key] = value[:, :, None, None].contiguous()
    return out


def clip_text_state(model: torch.nn.Module) -> Tensors:
    """A transformers CLIP text model's weights under `text_model.` (transformers >= 5.6 dropped that level)."""
    sd = {}
    for key, value in model.state_dict().items():
        if key.startswith("text_projection."):
            continue
        sd[key if key.startswith("text_model.") else f"text_model.{key}"] = value
    return sd


def clip_to_original(model: torch.nn.Module, prefix: str) -> Tensors:
    """CLIP ViT-L as the WebUI's FrozenCLIPEmbedder stores it (transformers names, with position_ids)."""
    sd = {prefix + k: v for k, v in clip_text_state(model).items()}
    sd[prefix + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return sd


def open_clip_to_original(model: torch.nn.Module, prefix: str) -> Tensors:
    """A CLIPTextModelWithProjection in OpenCLIP's layout: q/k/v packed into `attn.in_proj_*`."""
    sd = {k[len("text_model."):]: v for k, v in clip_text_state(model).items()}
    out = {prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "text_projection": model.text_projection.weight.detach().T.contiguous(),
           prefix + "logit_scale": torch.tensor(4.6052, dtype=model.text_projection.weight.dtype)}
    for part in ("weight", "bias"):
        out[f"{prefix}ln_final.{part}"] = sd.pop(f"final_layer_norm.{part}")
    for i in range(model.config.num_hidden_layers):
        layer, block = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{block}attn.in_proj_{part}"] = torch.cat([sd.pop(f"{layer}self_attn.{p}_proj.{part}") for p in "qkv"])
        for key in [k for k in sd if k.startswith(layer)]:
            name, _, part = key[len(layer):].rpartition(".")
            out[f"{block}{OPEN_CLIP_LAYER[name]}.{part}"] = sd.pop(key)
    sd.pop("embeddings.position_ids", None)
    if sd:
        raise RuntimeError(f"OpenCLIP conversion left keys unmapped: {sorted(sd)[:5]}")
    return out


def check_round_trip(what: str, expected: Tensors, got: Tensors) -> None:
    """diffusers' converter must give back exactly the tensors the checkpoint was made from."""
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = [k for k in expected.keys() & got.keys()
             if expected[k].numel() != got[k].numel() or not torch.equal(expected[k], got[k].reshape(expected[k].shape))]
    if missing or extra or wrong:
        raise RuntimeError(f"{what}: diffusers' converter does not read the written layout back: missing {missing[:3]}, "
                           f"extra {extra[:3]}, different {wrong[:3]}")
    print(f"  {what}: {len(expected)} tensors convert back exactly")


def check_no_zero_layers(what: str, sd: Tensors) -> None:
    """A weight matrix left at zero (ldm's habit for output layers) would make LoRA tests meaningless."""
    zeros = [k for k, v in sd.items() if k.endswith(".weight") and v.ndim >= 2 and not v.any()]
    if zeros:
        raise RuntimeError(f"{what}: zero-initialised layers {zeros[:5]}")


def build_unet_and_vae(unet_config: Dict, vae_sample_size: int) -> Tensors:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet = UNet2DConditionModel(**unet_config)
    unet_sd = unet.state_dict()
    check_no_zero_layers("UNet", unet_sd)
    out = rename(unet_sd, unet_rules(unet_config), "model.diffusion_model.")
    check_round_trip("UNet", unet_sd, convert_ldm_unet_checkpoint(out, dict(unet.config)))
    vae = AutoencoderKL(**VAE, sample_size=vae_sample_size)
    vae_sd = vae.state_dict()
    vae_out = vae_to_original(vae_sd, VAE)
    check_round_trip("VAE", vae_sd, convert_ldm_vae_checkpoint(vae_out, dict(vae.config)))
    return {**out, **vae_out}


def randomise_layer_norms(model: torch.nn.Module) -> None:
    """Give every LayerNorm a trained-looking scale and shift (1 + N(0, 0.1), N(0, 0.1)) instead of 1 and 0.

    With the initial 1 and 0 the text encoder's final LayerNorm makes each token's features average to
    exactly zero, so the whole prompt embedding's mean is 0.0 in fp32 for some prompts, and the WebUI's
    "Original" emphasis divides by that mean (`z * (original_mean / new_mean)`): 0/0, NaN images. Released
    checkpoints never have that; the random ones must not either."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.elementwise_affine:
                module.weight.copy_(1 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))


def build_clip_l(prefix: str) -> Tensors:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    randomise_layer_norms(model)
    out = clip_to_original(model, prefix)
    expected = {**clip_text_state(model), "text_model.embeddings.position_ids": out[prefix + "text_model.embeddings.position_ids"]}
    check_round_trip("CLIP ViT-L", expected, convert_ldm_clip_checkpoint(out, remove_prefix=prefix))
    return out


def build_open_clip_bigg(prefix: str) -> Tensors:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection(CLIPTextConfig(**OPEN_CLIP_BIGG))
    randomise_layer_norms(model)
    out = open_clip_to_original(model, prefix)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    check_round_trip("OpenCLIP bigG", expected, convert_open_clip_checkpoint(model, out, prefix=prefix))
    return out


def build_checkpoint(family: str, seed: int, dtype: torch.dtype) -> Tensors:
    """All weights of a random `family` ("sd15" or "sdxl") checkpoint, original key names, in `dtype`."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the saved precision: SDXL in fp32 would need twice the memory
    try:
        if family == "sd15":
            return {**build_unet_and_vae(SD15_UNET, 512), **build_clip_l("cond_stage_model.transformer.")}
        return {**build_unet_and_vae(SDXL_UNET, 1024), **build_clip_l("conditioner.embedders.0.transformer."),
                **build_open_clip_bigg("conditioner.embedders.1.model.")}
    finally:
        torch.set_default_dtype(previous)


def write_checkpoint(sd: Tensors, out: Path, metadata: Dict[str, str]) -> None:
    """Write atomically: a partial file never takes the final name."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    tmp.replace(out)


def write_clip_cache(hf_home: Path, bpe: Path) -> Path:
    """`openai/clip-vit-large-patch14` config + tokenizer (no weights) in the Hugging Face cache layout."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lora_trainer.models.tokenizers import write_clip_tokenizer_files

    repo = hf_home / "hub" / "models--openai--clip-vit-large-patch14"
    revision = "0" * 40  # no real commit: refs/main only has to name the snapshot folder
    snapshot = repo / "snapshots" / revision
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    write_clip_tokenizer_files(snapshot, merges)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (snapshot / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
              "logit_scale_init_value": 2.6592, "text_config": {**CLIP_L, "model_type": "clip_text_model"},
              "vision_config": {**CLIP_L_VISION, "model_type": "clip_vision_model"}}
    (snapshot / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision, encoding="utf-8")
    return snapshot


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for family in ("sd15", "sdxl"):
        p = sub.add_parser(family, help=f"a random {family} checkpoint")
        p.add_argument("output", type=Path, help="the .safetensors file to write")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
        p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p = sub.add_parser("clip-cache", help="openai/clip-vit-large-patch14 tokenizer + config into a HF cache")
    p.add_argument("--hf-home", type=Path, required=True, help="the HF_HOME folder (files go under hub/)")
    p.add_argument("--bpe", type=Path, required=True, help="open_clip's bpe_simple_vocab_16e6.txt.gz")
    a = ap.parse_args(argv)
    if a.command == "clip-cache":
        if not a.bpe.is_file():
            ap.error(f"--bpe {a.bpe}: no such file (it is in the installed open_clip package folder)")
        print(f"wrote {write_clip_cache(a.hf_home, a.bpe)}")
        return 0
    if a.output.suffix != ".safetensors":
        ap.error(f"{a.output}: the output must end in .safetensors")
    if a.output.exists() and not a.overwrite:
        ap.error(f"{a.output} exists; pass --overwrite to replace it")
    started = time.time()
    sd = build_checkpoint(a.command, a.seed, torch.float16 if a.dtype == "fp16" else torch.float32)
    metadata = {"format": "pt", "random_checkpoint": json.dumps({"family": a.command, "seed": a.seed, "dtype": a.dtype})}
    write_checkpoint(sd, a.output, metadata)
    params = sum(v.numel() for v in sd.values())
    print(f"wrote {a.output}: {len(sd)} tensors, {params / 1e9:.3f} G values, {a.output.stat().st_size / 2**30:.2f} GiB, "
          f"{time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
