"""TextTrainConfig: the typed, validated description of a text-model LoRA run (`task: text` in the YAML).

Same conventions as the image trainer's TrainConfig: one field per key with its help text, choices and
bounds; `load_text_config` reads YAML plus `--set` overrides and raises ConfigError naming the bad key
(with the closest valid key for a typo) before anything is loaded.
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

from ..errors import ConfigError
from ..utils.yaml_files import read_yaml_file

CONFIG_VERSION = 1
TASK = "text"
PRECISIONS = ("auto", "no", "fp16", "bf16")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear")
OPTIMIZERS = ("adamw", "adamw8bit")
DEVICES = ("auto", "cpu", "cuda", "mps")
TXT_UNITS = ("paragraph", "line", "file")


def _key(default: Any, help: str, choices: tuple = (), minimum: Optional[float] = None,
         maximum: Optional[float] = None) -> Any:
    """A config field with its help text and the values it accepts."""
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TextTrainConfig:
    """Every setting of a text-model LoRA run."""

    task: str = _key(TASK, "Always `text` here: it makes `train`, `check` and `plan` use the text-model trainer.",
                     choices=(TASK,))
    # --- data ---
    train_data: str = _key("", "A .txt or .jsonl file, or a folder of them. .jsonl lines are {\"text\": ...} or "
                               "{\"prompt\": ..., \"completion\": ...}.")
    txt_unit: str = _key("paragraph", "How a .txt file splits into documents: at blank lines (paragraph), at "
                                      "every line (line: e.g. one prompt per line), or not at all (file).",
                         choices=TXT_UNITS)
    packing: bool = _key(True, "Join plain-text documents (an end-of-text token between them) and cut the stream "
                               "into max_seq_length blocks: no padding. Off: one padded sequence per document.")
    completion_only_loss: bool = _key(True, "For prompt/completion pairs: learn only the completion tokens (the "
                                            "prompt is context). Off: learn the whole pair.")
    add_eos: bool = _key(True, "End every document and completion with the tokenizer's end-of-text token, so "
                               "the model learns where to stop.")
    max_seq_length: Optional[int] = _key(None, "Tokens per training sequence. Default: the model's limit, at "
                                               "most 1024. Longer pairs are cut (reported by `check`).", minimum=8)
    validation_split: float = _key(0.0, "Fraction of the examples held out; their loss is reported at every "
                                        "save and at the end.", minimum=0.0, maximum=0.5)

    # --- model ---
    base_model: str = _key("", "A local Hugging Face folder with a causal language model (config.json, weights, "
                               "tokenizer): GPT-2 class, Llama, Qwen2, Mistral ...")
    tokenizer_path: Optional[str] = _key(None, "Folder of the tokenizer when it is not in base_model.")
    target_modules: Union[str, List[str]] = _key("auto", "Layers that get LoRA: auto (every linear layer of the "
                                                         "transformer blocks: q/k/v/o and MLP; GPT-2's c_attn, "
                                                         "c_proj, c_fc) or a list of layer names.")
    lora_rank: int = _key(8, "LoRA rank.", minimum=1)
    lora_alpha: Optional[float] = _key(None, "LoRA alpha; scale is alpha/rank. Default: lora_rank.", minimum=0.0)
    lora_dropout: float = _key(0.0, "Dropout on the LoRA path during training.", minimum=0.0, maximum=1.0)

    # --- optimisation ---
    batch_size: int = _key(4, "Sequences per batch. Out of memory: lower it, or max_seq_length, or turn on "
                              "gradient_checkpointing (`plan` shows what fits).", minimum=1)
    gradient_accumulation_steps: int = _key(1, "Batches per optimizer step.", minimum=1)
    epochs: int = _key(3, "Passes over the examples.", minimum=1)
    max_steps: Optional[int] = _key(None, "Total optimizer steps; overrides epochs when set.", minimum=1)
    learning_rate: float = _key(2e-4, "Learning rate of the LoRA weights.", minimum=0.0)
    lr_scheduler: str = _key("constant", "Learning-rate schedule.", choices=SCHEDULERS)
    lr_warmup_steps: int = _key(0, "Steps of linear warm-up.", minimum=0)
    optimizer: str = _key("adamw", "adamw, or adamw8bit (needs bitsandbytes).", choices=OPTIMIZERS)
    weight_decay: float = _key(0.0, "AdamW weight decay.", minimum=0.0)
    max_grad_norm: float = _key(1.0, "Gradient clipping norm (0 = off).", minimum=0.0)
    mixed_precision: str = _key("auto", "auto: bf16 where the GPU supports it, else fp16 on CUDA; bf16 on a CPU "
                                        "with AMX, else fp32. Base weights in that dtype, LoRA weights fp32.",
                                choices=PRECISIONS)
    gradient_checkpointing: bool = _key(False, "Recompute activations in the backward pass: much less memory, "
                                               "about a third slower.")
    seed: int = _key(42, "Random seed: the same seed and config give the same adapter.")
    max_nonfinite_steps: int = _key(5, "Stop after this many steps in a row with a NaN/inf loss (each is skipped).",
                                    minimum=1)
    device: str = _key("auto", "cuda, mps or cpu; auto picks the best available.", choices=DEVICES)

    # --- output ---
    output_dir: str = _key("", "Folder for the adapter (adapter_model.safetensors + adapter_config.json), "
                               "checkpoints, logs and the effective config.")
    save_steps: int = _key(0, "Also save checkpoint-stepNNNNNNNN/ adapters (and the state to resume) every N "
                              "steps (0 = only at the end).", minimum=0)
    merge: bool = _key(False, "Also write the base model with the adapter merged in (and its tokenizer) to "
                              "output_dir/merged/, loadable without peft.")
    overwrite: bool = _key(False, "Start a new run in an output_dir that already holds an adapter (replaced when "
                                  "the new one is saved). Off: such a run is refused.")
    resume: Union[bool, str] = _key(False, "true: continue this output_dir's interrupted run exactly (or a path to "
                                           "its state/ folder).")
    config_version: int = _key(CONFIG_VERSION, "Config format version (written by the tool).")

    @property
    def effective_alpha(self) -> float:
        return float(self.lora_rank if self.lora_alpha is None else self.lora_alpha)

    @property
    def effective_output_name(self) -> str:
        """The run's name: the last folder name of output_dir."""
        return Path(os.path.abspath(self.output_dir)).name or "text_lora"

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __post_init__(self) -> None:
        _validate(self)


FIELDS: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TextTrainConfig)}
REQUIRED = ("train_data", "base_model", "output_dir")
PATH_KEYS = ("train_data", "base_model", "tokenizer_path", "output_dir")
ALIASES = {"dataset": "train_data", "train_file": "train_data", "model_name_or_path": "base_model",
           "rank": "lora_rank", "lora_r": "lora_rank", "max_length": "max_seq_length",
           "max_train_steps": "max_steps", "num_train_epochs": "epochs", "train_batch_size": "batch_size",
           "per_device_train_batch_size": "batch_size", "save_every_n_steps": "save_steps"}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELDS) + list(ALIASES), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{ALIASES.get(close[0], close[0])}'?)"
    return " (run `python -m lora_trainer keys --task text` to list valid keys)"


def _coerce(name: str, value: Any) -> Any:
    """`value` as the field's declared type, or ConfigError saying what was expected."""
    hint = typing.get_type_hints(TextTrainConfig)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    choices = FIELDS[name].metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"config error: {name}: {value!r} is not one of {', '.join(map(str, choices))}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config error: {name}: expected true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config error: {name}: expected a whole number, got {value!r}")
    elif hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)  # YAML reads 2e-4 (no dot) as text
        except (TypeError, ValueError):
            raise ConfigError(f"config error: {name}: expected a number, got {value!r}") from None
    elif hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config error: {name}: expected text, got {value!r}")
        value = str(value)
    elif name == "target_modules":
        if not (isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"config error: target_modules: expected auto or a list of layer names, got {value!r}")
    elif name == "resume":
        if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
            value = value.strip().lower() == "true"
        if not isinstance(value, (bool, str)):
            raise ConfigError(f"config error: resume: expected true/false or a path, got {value!r}")
    return value


def _validate(cfg: TextTrainConfig) -> None:
    for name, f in FIELDS.items():
        value = _coerce(name, getattr(cfg, name))
        object.__setattr__(cfg, name, value)
        lo, hi = f.metadata["min"], f.metadata["max"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo:
                raise ConfigError(f"config error: {name}: {value} is below the minimum {lo}")
            if hi is not None and value > hi:
                raise ConfigError(f"config error: {name}: {value} is above the maximum {hi}")
    if cfg.config_version > CONFIG_VERSION:
        raise ConfigError(f"config error: config_version {cfg.config_version} is newer than this tool understands "
                          f"({CONFIG_VERSION}); update lora_trainer")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("config error: resume and overwrite: set one of them (resume continues the run in "
                          "output_dir, overwrite starts a new one there)")


def text_config_from_dict(raw: Dict[str, Any], check_required: bool = True) -> TextTrainConfig:
    """Validate a plain dict (parsed YAML, the page's values) into a TextTrainConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: expected a mapping of key: value, got {type(raw).__name__}")
    values: Dict[str, Any] = {"config_version": CONFIG_VERSION}
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise ConfigError(f"config error: unknown key '{key}'{_suggest(key)}")
        values[name] = value
    if check_required:
        missing = [k for k in REQUIRED if not values.get(k)]
        if missing:
            raise ConfigError(f"config error: missing required key(s): {', '.join(missing)}")
    return TextTrainConfig(**values)


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """The key: value mapping of a YAML config file, or ConfigError naming the file (and the line, a key given
    twice, text that is not UTF-8: the image configs' reader)."""
    path = Path(path)
    raw = read_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: {path} must contain key: value pairs")
    return raw


def load_text_config(path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> TextTrainConfig:
    """Read a YAML config, apply overrides; a relative path found only beside the config file is taken from there."""
    raw = read_yaml(path)
    raw.update(overrides or {})
    base = Path(path).parent
    for key in PATH_KEYS:
        value = raw.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and not os.path.exists(value):
            if (base / value).exists():
                raw[key] = str(base / value)
    return text_config_from_dict(raw)


def dump_text_config(cfg: TextTrainConfig) -> str:
    """The effective config as YAML (the keys the loader reads)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def describe_text_keys() -> str:
    """One line per key with its default and help (`python -m lora_trainer keys --task text`)."""
    from ..config import describe_fields

    return describe_fields(FIELDS, 28)
