"""Model families: what the engine may ask of a kind of base model, without branching on its name.

A family knows how to recognise its single-file checkpoints, its default original (ldm) config, the
kohya prefixes and module naming of its LoRA files, and the metadata values loaders look for.
A new family is one new file with a `ModelFamily` subclass plus one entry in `models/__init__.py`.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..errors import LoraTrainerError, ModelLoadError
from ..network.checkpoint_keys import WeightRef


# The KL-f8 VAE that SD1, SD2 and SDXL share, as the original configs describe it (the converters read it).
KL_F8_VAE_CONFIG: Dict[str, Any] = {
    "params": {
        "embed_dim": 4,
        "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
            "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
        },
    }
}


class ModelFamily:
    """Base class; subclasses set the class attributes and override what differs."""

    name: str = ""  # short id: "sd1"
    title: str = ""  # "Stable Diffusion 1.x"
    sd_version: str = ""  # the WebUI sidecar's "sd version": "SD1"
    modelspec_architecture: str = ""  # "stable-diffusion-v1/lora"
    text_encoder_prefixes: Sequence[str] = ("lora_te",)
    unet_prefix: str = "lora_unet"
    is_v2: bool = False
    # gradient_checkpointing: auto turns it on for families too big to train without it on a 12 GB GPU
    gradient_checkpointing_by_default: bool = False
    # the ModelBundle class that trains this family's diffusers/transformers parts (set by each family)
    bundle_class: Any = None

    def base_model_version(self, prediction_type: str) -> str:
        """kohya's `ss_base_model_version`."""
        raise NotImplementedError

    def modelspec_architecture_for(self, prediction_type: str) -> str:
        """`modelspec.architecture` of a LoRA for this family."""
        return self.modelspec_architecture

    def detect_single_file(self, keys: Iterable[str], shapes: Dict[str, Sequence[int]]) -> bool:
        """True when a single-file checkpoint with these keys/shapes belongs to this family."""
        raise NotImplementedError

    def detect_diffusers(self, unet_config: Any, text_encoder_config: Any) -> bool:
        """True when a diffusers folder with these UNet / text-encoder configs belongs to this family."""
        return False

    def original_config(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, Any]:
        """Default ldm-style config for a single-file checkpoint of this family."""
        raise NotImplementedError

    # ------------------------------------------------------------------ loading (see models/loading.py)
    def unet_config(self, original: Dict[str, Any], sd: Dict[str, Any]) -> Dict[str, Any]:
        """diffusers UNet2DConditionModel config of a single-file checkpoint with this original config."""
        from diffusers.loaders import single_file_utils as sfu

        return sfu.create_unet_diffusers_config_from_ldm(original, sd, image_size=512)

    def load_text_encoders(self, sd: Dict[str, Any], original: Dict[str, Any], tokenizer, source: str) -> Dict[str, Any]:
        """Bundle parts (text_encoder, tokenizer, ...) converted from a single-file checkpoint's weights."""
        raise NotImplementedError

    def load_diffusers_text_encoders(self, path: Any) -> Dict[str, Any]:
        """Bundle parts (text_encoder, tokenizer, ...) of a diffusers folder (local files only)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        return {"text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True),
                "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)}

    def meta_text_encoders(self, original: Dict[str, Any]) -> Dict[str, Any]:
        """Randomly initialised text encoder(s) of this family (built under the caller's device context)."""
        raise NotImplementedError

    def single_file_prediction_type(self, params: Dict[str, Any], config_from_file: bool, unet: Any) -> str:
        """epsilon or v_prediction of a converted single file: the original config's `parameterization`."""
        return "v_prediction" if params.get("parameterization", "eps") == "v" else "epsilon"

    def make_bundle(self, parts: Dict[str, Any], name: str, clip_skip: int):
        """The training bundle for loaded parts (`bundle_class`)."""
        return self.bundle_class(self, name=name, clip_skip=clip_skip, **parts)

    def unet_kohya_path(self, diffusers_path: str, layers_per_block: int) -> str:
        """Module path used in kohya names for a diffusers UNet module (SD1/SD2: unchanged)."""
        return diffusers_path

    def checkpoint_lora_keys(self, shapes: Dict[str, Sequence[int]]) -> Dict[str, WeightRef]:
        """{kohya module name: weight (key, rows)} of a single-file checkpoint of this family, given its key
        shapes (what merging a LoRA into the checkpoint patches)."""
        raise LoraTrainerError(f"merging LoRAs into {self.title} checkpoints is not supported yet")


class FamilyRegistry:
    """An ordered list of families; the first whose detector accepts a checkpoint wins."""

    def __init__(self, families: Iterable[ModelFamily]):
        self.families: List[ModelFamily] = []
        for fam in families:
            if any(f.name == fam.name for f in self.families):
                raise ValueError(f"model family {fam.name!r} registered twice")
            self.families.append(fam)

    def get(self, name: str) -> ModelFamily:
        for fam in self.families:
            if fam.name == name:
                return fam
        raise ModelLoadError(f"unknown model family {name!r}; known: {', '.join(f.name for f in self.families)}")

    def detect(self, keys: Iterable[str], shapes: Dict[str, Sequence[int]], source: str = "") -> ModelFamily:
        keys = list(keys)
        for fam in self.families:
            if fam.detect_single_file(keys, shapes):
                return fam
        tried = ", ".join(f.title for f in self.families)
        raise ModelLoadError(f"{source or 'checkpoint'}: not a checkpoint this trainer understands "
                             f"(tried: {tried}); expected an ldm-layout single file "
                             f"(keys like model.diffusion_model.*)")

    def detect_diffusers(self, unet_config: Any, text_encoder_config: Any, source: str = "") -> ModelFamily:
        for fam in self.families:
            if fam.detect_diffusers(unet_config, text_encoder_config):
                return fam
        raise ModelLoadError(f"{source or 'model folder'}: a diffusers model of a kind this trainer does not "
                             f"know (cross_attention_dim={getattr(unet_config, 'cross_attention_dim', '?')})")

    def names(self) -> List[str]:
        return [f.name for f in self.families]


def nested_get(config: Dict[str, Any], *path: str, default: Optional[Any] = None) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node
