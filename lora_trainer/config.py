"""TrainConfig: the one typed, validated description of a training run.

A user writes YAML with the keys below (the names users of kohya-style tools already know);
`load_config` turns it into a `TrainConfig` or raises `ConfigError` naming the bad key, with the
closest valid key for a typo. Validation happens here, once, before anything heavy is loaded.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .adapters import default_adapter_kinds
from .config_rules import check_output_name, check_range, resolve_buckets
from .errors import ConfigError
from .utils.yaml_files import read_yaml_file, yaml_problem

CONFIG_VERSION = 1

PRECISIONS = ("auto", "no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear")
OPTIMIZERS = ("adamw", "adamw8bit")
PREDICTION_TYPES = ("auto", "epsilon", "v_prediction")
DEVICES = ("auto", "cpu", "cuda", "mps")
CACHE_MODES = ("auto", True, False)
NETWORK_TYPES = tuple(default_adapter_kinds().names())


def _opt(default: Any, help: str, choices: tuple = (), minimum: Optional[float] = None,
         maximum: Optional[float] = None, positive: bool = False) -> Any:
    """A config field with its help text and the values it accepts (`positive`: above 0, not 0)."""
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum, "positive": positive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run. Field help texts double as the UI's tips."""

    # --- data ---
    train_data_dir: str = _opt("", "Folder of training images (searched recursively; kohya `N_name` subfolders give repeats).")
    metadata_path: Optional[str] = _opt(None, "CSV with columns file_name,text. Default: train_data_dir/metadata.csv if present, else caption sidecars.")
    caption_extension: str = _opt(".txt", "Caption sidecar extension next to each image (.txt or .caption).")
    trigger_word: Optional[str] = _opt(None, "Prepended to every caption, e.g. 'sks style'. Also the LoRA's activation text.")
    shuffle_caption: bool = _opt(False, "Shuffle comma-separated tags each time a caption is used.")
    keep_tokens: int = _opt(0, "With shuffle_caption: the first N tags stay in place.", minimum=0)
    caption_dropout_rate: float = _opt(0.0, "Probability of training an image with an empty caption.", minimum=0.0, maximum=1.0)
    resolution: int = _opt(512, "Training resolution in pixels (the area of each bucket is at most resolution^2).", minimum=64)
    enable_bucket: bool = _opt(True, "Aspect-ratio buckets: every image keeps its framing. Off: center crop to a square.")
    min_bucket_reso: Optional[int] = _opt(None, "Smallest bucket side in pixels. Empty: half the resolution (256 at 512), at least bucket_reso_steps.", minimum=64)
    max_bucket_reso: Optional[int] = _opt(None, "Largest bucket side in pixels. Empty: twice the resolution (1024 at 512).", minimum=64)
    bucket_reso_steps: int = _opt(64, "Bucket sides are multiples of this (64 matches kohya; must be a multiple of 8).", minimum=8)
    bucket_no_upscale: bool = _opt(False, "Never upscale a small image: its bucket is at most its own size.")
    flip_aug: bool = _opt(False, "Random horizontal flips (needs pixels every step, so latents are not cached in memory).")
    cache_latents: Union[str, bool] = _opt("auto", "Encode every image once with the VAE (auto = on; with flip_aug the flipped images are cached too).", choices=CACHE_MODES)
    cache_latents_to_disk: bool = _opt(False, "Also keep encoded latents on disk (a cache folder beside the images) so a re-run skips the VAE.")
    cache_text_encoder_outputs: Union[str, bool] = _opt("auto", "Encode each caption once. auto: on when the text encoder is frozen and captions are fixed.", choices=CACHE_MODES)
    cache_while_training: Union[str, bool] = _opt("auto", "Cache each image's latent and each caption when the first epoch first needs it instead of all before the first step: training starts sooner, the result is the same. auto: on for one process (data-parallel ranks encode their shares before training and exchange them); false: all first.", choices=CACHE_MODES)
    num_workers: int = _opt(2, "Threads that load the next steps' images when latents are not cached (0 = load in the training thread).", minimum=0)

    # --- model ---
    base_model: str = _opt("", "Base checkpoint: a single .safetensors/.ckpt file (SD1.x, SD2.x, SDXL) or a diffusers folder.")
    base_model_config: Optional[str] = _opt(None, "Original (ldm) YAML config for an unusual single-file checkpoint. Default: <checkpoint>.yaml beside it, else detected.")
    tokenizer_path: Optional[str] = _opt(None, "Folder with the CLIP tokenizer (vocab.json, merges.txt) when a single-file checkpoint is used offline.")
    prediction_type: str = _opt("auto", "epsilon or v_prediction; auto reads it from the model.", choices=PREDICTION_TYPES)
    clip_skip: int = _opt(1, "Use the output of the N-th last text-encoder layer (2 for anime-style models).", minimum=1, maximum=12)

    # --- LoRA ---
    lora_rank: int = _opt(8, "LoRA rank (dim). Higher learns more detail and makes bigger files.", minimum=1)
    lora_alpha: Optional[float] = _opt(None, "LoRA alpha; effective scale is alpha/rank. Default: equal to lora_rank.", positive=True)
    lora_dropout: float = _opt(0.0, "Dropout on the LoRA path during training.", minimum=0.0, maximum=1.0)
    network_type: str = _opt("lora", "Adapter kind: lora (kohya LoRA on attention), locon (LoRA on attention and ResNet convs), loha (Hadamard product), lokr (Kronecker product); DoRA is use_dora in network_args of locon, loha, lokr.", choices=NETWORK_TYPES)
    network_args: Dict[str, Any] = _opt({}, "Options of the adapter kind, kohya-style (key: value). locon, loha, lokr: conv_dim (rank of 3x3 convs; default lora_rank, 0 = none), conv_alpha, use_dora; lokr also factor (-1 = balanced). lora takes none.")
    train_text_encoder: bool = _opt(False, "Also train LoRA layers in the text encoder.")
    init_lora: Optional[str] = _opt(None, "Continue from an existing kohya LoRA file (rank and alpha are read from it; fresh optimizer and step counter).")
    resume: Union[bool, str] = _opt(False, "true: continue this output_dir's interrupted run exactly (or a path to its state/ folder).")

    # --- optimisation ---
    batch_size: int = _opt(1, "Images per batch. Out of memory: lower it, or enable gradient_checkpointing.", minimum=1)
    gradient_accumulation_steps: int = _opt(1, "Batches accumulated per optimizer step (effective batch = batch_size x this).", minimum=1)
    epochs: int = _opt(10, "Passes over the dataset (repeats included).", minimum=1)
    max_steps: Optional[int] = _opt(None, "Total optimizer steps; overrides epochs when set.", minimum=1)
    learning_rate: float = _opt(1e-4, "Learning rate of the UNet LoRA.", positive=True)
    unet_lr: Optional[float] = _opt(None, "UNet learning rate; default learning_rate.", positive=True)
    text_encoder_lr: Optional[float] = _opt(None, "Text-encoder LoRA learning rate; default learning_rate.", positive=True)
    text_encoder_2_lr: Optional[float] = _opt(None, "SDXL's second text encoder (OpenCLIP bigG) learning rate; default text_encoder_lr.", positive=True)
    lr_scheduler: str = _opt("constant", "Learning-rate schedule.", choices=SCHEDULERS)
    lr_warmup_steps: int = _opt(0, "Steps of linear warm-up.", minimum=0)
    lr_num_cycles: int = _opt(1, "Restarts for cosine_with_restarts.", minimum=1)
    optimizer: str = _opt("adamw", "adamw, or adamw8bit (needs bitsandbytes).", choices=OPTIMIZERS)
    weight_decay: float = _opt(1e-2, "AdamW weight decay.", minimum=0.0)
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = off).", minimum=0.0)
    noise_offset: float = _opt(0.0, "Noise offset (~0.05-0.1) helps very dark/bright images.", minimum=0.0)
    min_snr_gamma: Optional[float] = _opt(None, "Min-SNR loss weighting gamma (5 is the paper's value).", positive=True)
    mixed_precision: str = _opt("auto", "auto: bf16 where the GPU supports it, else fp16 on CUDA; on a CPU bf16 where it has AMX (Xeon Sapphire Rapids and newer; faster than fp32, see benchmarks/README.md), else fp32. Base weights bf16/fp16, LoRA weights always fp32.", choices=PRECISIONS)
    gradient_checkpointing: Union[str, bool] = _opt("auto", "Trade some speed (benchmarks/README.md) for much less memory. auto: on for SDXL, off otherwise.", choices=CACHE_MODES)
    seed: int = _opt(42, "Random seed: the same seed and config give the same LoRA.")
    max_nonfinite_steps: int = _opt(5, "Stop after this many steps in a row with a NaN/inf loss (each one is skipped).", minimum=1)
    device: str = _opt("auto", "cuda, mps or cpu; auto picks the best available.", choices=DEVICES)
    channels_last: Union[str, bool] = _opt("auto", "Keep the UNet's activations in channels-last layout (faster convolutions on NVIDIA GPUs once launch overhead is gone, and in bf16 on a CPU). auto: on when the step runs as CUDA graphs, or in bf16 on a CPU.", choices=CACHE_MODES)
    pack_conv_weights: Union[str, bool] = _opt("auto", "On a CPU, run the frozen UNet convolutions on weights packed once in oneDNN's layout (one copy for the forward pass, one for the backward; they replace the original weights while training and `python -m lora_trainer plan` shows their size) or, in fp32, as matrix products on the weights as they are, instead of re-packing the weights on every call: faster CPU steps (benchmarks/README.md). auto: in fp32 the 1x1 and 1280-channel layers run as matrix products and only the others are packed (SD1.5: 0.24 GiB of copies instead of 2.1 GiB, steps within a few percent of true), in bf16 every layer is packed; on when half the available memory (or the container's limit) holds the copies, off when that is unknown, never with torch_compile or a WebUI model. true: every layer packed (fastest fp32 steps, most memory).", choices=CACHE_MODES)
    torch_compile: bool = _opt(False, "Compile the UNet with torch.compile (faster steps on a GPU after a minute of compiling).")
    half_precision_norms: Union[str, bool] = _opt("auto", "With bf16/fp16 base weights, run the UNet's GroupNorm and LayerNorm layers in that dtype instead of autocast's fp32 on a GPU (the kernels still accumulate their statistics in fp32): no fp32 copy of each normalised activation and no cast back before the next layer. auto: on for bf16 on CUDA (a CPU already computes them in bf16; fp16 only when true).", choices=CACHE_MODES)
    cuda_graphs: Union[str, bool] = _opt("auto", "Replay each step's forward/backward as a CUDA graph (no per-kernel launch cost; big speed-up at small batches). auto: on for CUDA when latents and captions are cached, without gradient checkpointing or torch_compile, for the first batch shape; true: every batch shape (more memory), also with those two.", choices=CACHE_MODES)

    # --- samples and validation ---
    sample_prompts: Optional[Union[str, List[str]]] = _opt(None, "Prompts for sample images: a list, or a text file with one per line (flags --n negative --w --h --s steps --l cfg --d seed).")
    sample_every_n_steps: int = _opt(0, "Take samples every N steps (0 = off).", minimum=0)
    sample_every_n_epochs: int = _opt(0, "Take samples every N epochs (0 = off).", minimum=0)
    sample_at_start: bool = _opt(False, "Also take samples before the first step (the base model's look).")
    sample_steps: int = _opt(20, "Denoising steps of each sample (a prompt's --s overrides).", minimum=1)
    sample_cfg: float = _opt(7.0, "CFG scale of each sample (a prompt's --l overrides).", minimum=0.0)
    validation_split: float = _opt(0.0, "Fraction of the images held out to measure validation loss at every save.", minimum=0.0, maximum=0.5)
    validation_dir: Optional[str] = _opt(None, "A separate folder of validation images (instead of validation_split).")

    # --- output ---
    output_dir: str = _opt("", "Folder for the LoRA, checkpoints, logs and the effective config.")
    output_name: Optional[str] = _opt(None, "File name of the LoRA (no extension). Default: the last folder name of output_dir.")
    overwrite: bool = _opt(False, "A new run may replace an earlier run in output_dir: its LoRA, step checkpoints, training state, samples and logs are deleted when the new run starts. Off: such a run is refused (resume it, or pick another output_name / output_dir). resume: true never deletes anything.")
    save_steps: int = _opt(0, "Also save <name>-stepNNNNNNNN.safetensors every N steps (0 = only at the end).", minimum=0)
    save_precision: str = _opt("fp16", "Dtype of the saved LoRA tensors.", choices=SAVE_PRECISIONS)
    preferred_weight: float = _opt(0.8, "Weight suggested in the .json sidecar (<lora:name:weight>).")
    log_every_n_steps: int = _opt(10, "How often losses are read back from the GPU and logged (every step is logged; fewer reads = fewer host syncs).", minimum=1)

    config_version: int = _opt(CONFIG_VERSION, "Config format version (written by the tool; old files are migrated).")

    # ----------------------------------------------------------------- derived
    @property
    def effective_alpha(self) -> float:
        """LoRA alpha actually used (lora_alpha, or the rank when unset)."""
        return float(self.lora_rank if self.lora_alpha is None else self.lora_alpha)

    @property
    def effective_output_name(self) -> str:
        """LoRA file stem: output_name, or the last folder name of output_dir."""
        return self.output_name or Path(os.path.abspath(self.output_dir)).name or "lora"

    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    def learning_rate_for(self, role: str) -> float:
        """Learning rate of a LoRA component role (unet, text_encoder, text_encoder_2)."""
        if role == "unet":
            return self.effective_unet_lr
        if role == "text_encoder_2" and self.text_encoder_2_lr is not None:
            return self.text_encoder_2_lr
        return self.effective_text_encoder_lr

    def gradient_checkpointing_for(self, family) -> bool:
        """gradient_checkpointing with auto resolved by the model family."""
        if self.gradient_checkpointing == "auto":
            return bool(family.gradient_checkpointing_by_default)
        return bool(self.gradient_checkpointing)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict in field order, suitable for YAML."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __post_init__(self) -> None:
        _validate(self)


FIELDS: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
REQUIRED = ("train_data_dir", "base_model", "output_dir")

# Old or alternative names users write; mapped on load (with the new name reported nowhere as an error).
ALIASES = {
    "network_dim": "lora_rank",
    "network_alpha": "lora_alpha",
    "train_batch_size": "batch_size",
    "max_train_steps": "max_steps",
    "max_train_epochs": "epochs",
    "num_train_epochs": "epochs",
    "pretrained_model_name_or_path": "base_model",
    "save_every_n_steps": "save_steps",
    "checkpointing_steps": "save_steps",
    "rank": "lora_rank",
}


def _suggest(key: str) -> str:
    names = list(FIELDS) + list(ALIASES)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{ALIASES.get(close[0], close[0])}'?)"
    return " (run `python -m lora_trainer keys` to list valid keys)"


def _check_type(name: str, value: Any) -> Any:
    """Coerce `value` to the field's declared type or raise ConfigError."""
    f = FIELDS[name]
    hint = typing.get_type_hints(TrainConfig)[name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union and type(None) in args:
        if value is None:
            return None
        args = tuple(a for a in args if a is not type(None))
        hint = args[0] if len(args) == 1 else Union[args]
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
    choices = f.metadata.get("choices") or ()
    if choices:
        if isinstance(value, str) and value.lower() in ("true", "false") and True in choices:
            value = value.lower() == "true"
        if value not in choices:
            raise ConfigError(f"config error: {name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config error: {name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config error: {name}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)  # YAML reads 1e-4 (no dot) as a string
            except (TypeError, ValueError):
                raise ConfigError(f"config error: {name}: expected a number, got {value!r}") from None
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config error: {name}: expected text, got {value!r}")
        return str(value)
    if origin is Union:
        if bool in args and isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
            return value.strip().lower() == "true"  # "true"/"false" typed into a text box
        kinds = tuple(typing.get_origin(a) or a for a in args)
        if not isinstance(value, kinds):
            names = " or ".join("true/false" if a is bool else "text" if a is str else a.__name__ for a in args)
            raise ConfigError(f"config error: {name}: expected {names}, got {value!r}")
        return value
    if origin in (list, List) or origin in (dict, Dict):
        want = list if origin in (list, List) else dict
        if not isinstance(value, want):
            raise ConfigError(f"config error: {name}: expected a {want.__name__}, got {value!r}")
        return value
    return value


def _validate(cfg: TrainConfig) -> None:
    default_adapter_kinds().check_name(cfg.network_type)  # "not supported yet" for the kinds still to come
    for name in FIELDS:
        value = _check_type(name, getattr(cfg, name))
        object.__setattr__(cfg, name, value)
        check_range(name, value, FIELDS[name].metadata)
    if cfg.bucket_reso_steps % 8:
        raise ConfigError(f"config error: bucket_reso_steps: {cfg.bucket_reso_steps} must be a multiple of 8")
    if cfg.resolution % 8:
        raise ConfigError(f"config error: resolution: {cfg.resolution} must be a multiple of 8")
    resolve_buckets(cfg)
    check_output_name(cfg)
    if cfg.caption_extension and not cfg.caption_extension.startswith("."):
        object.__setattr__(cfg, "caption_extension", "." + cfg.caption_extension)
    if isinstance(cfg.sample_prompts, list) and not all(isinstance(p, str) for p in cfg.sample_prompts):
        raise ConfigError("config error: sample_prompts: expected a list of prompt lines (text)")
    if cfg.network_args:
        default_adapter_kinds().get(cfg.network_type).check_args(cfg.network_args)
    if cfg.validation_split and cfg.validation_dir:
        raise ConfigError("config error: validation_split and validation_dir: set one of them, not both")
    if cfg.config_version > CONFIG_VERSION:
        raise ConfigError(f"config error: config_version {cfg.config_version} is newer than this tool "
                          f"understands ({CONFIG_VERSION}); update lora_trainer")


def migrate(raw: Dict[str, Any]) -> Dict[str, Any]:
    """Bring an older config dict up to CONFIG_VERSION (version 1 is the first; nothing to do yet)."""
    raw = dict(raw)
    raw.setdefault("config_version", CONFIG_VERSION)
    return raw


def config_from_dict(raw: Dict[str, Any], check_required: bool = True) -> TrainConfig:
    """Validate a plain dict (e.g. parsed YAML) into a TrainConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: expected a mapping of key: value, got {type(raw).__name__}")
    values: Dict[str, Any] = {}
    for key, value in migrate(raw).items():
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise ConfigError(f"config error: unknown key '{key}'{_suggest(key)}")
        values[name] = value
    if check_required:
        missing = [k for k in REQUIRED if not values.get(k)]
        if missing:
            raise ConfigError(f"config error: missing required key(s): {', '.join(missing)}")
    return TrainConfig(**values)


def parse_overrides(pairs: List[str]) -> Dict[str, Any]:
    """Parse `key=value` strings from `--set`; values are read as YAML scalars."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise ConfigError(f"config error: --set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: --set {pair!r}: the value cannot be read ({yaml_problem(exc)}); "
                              f"put it in quotes: --set '{key.strip()}=\"{value}\"'") from None
    return out


def load_config(path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Read a YAML config, apply overrides, resolve relative paths against the config's folder."""
    path = Path(path)
    raw = read_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: {path} must contain key: value pairs")
    raw.update(overrides or {})
    return config_from_dict(resolve_paths(raw, path.parent))


PATH_KEYS = ("train_data_dir", "metadata_path", "base_model", "base_model_config", "tokenizer_path",
             "output_dir", "init_lora", "validation_dir")


def resolve_paths(raw: Dict[str, Any], base: Path) -> Dict[str, Any]:
    """Relative paths mean the current folder; one found only beside the config file is taken from there."""
    raw = dict(raw)
    for key in PATH_KEYS:
        value = raw.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and not os.path.exists(value):
            candidate = base / value
            if candidate.exists():
                raw[key] = str(candidate)
    return raw


def dump_config(cfg: TrainConfig) -> str:
    """The effective config as YAML (same keys the loader reads)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def describe_keys() -> str:
    """One line per key with its default and help; used by `python -m lora_trainer keys`."""
    return describe_fields(FIELDS, 30)


def describe_fields(fields: Dict[str, dataclasses.Field], width: int) -> str:
    """One line per config field: its name (padded to `width`), default and help (`keys`, `keys --task text`)."""
    lines = []
    for name, f in fields.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{name:{width}} default={default!r:12} {f.metadata.get('help', '')}")
    return "\n".join(lines)
