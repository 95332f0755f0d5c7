"""The Training form without gradio: which widget each config key gets, where it sits on the page, and
form values <-> TrainConfig <-> the YAML file the CLI reads.

Every config key (except `config_version`, which the tool writes) has exactly one widget: the Dataset
section holds the folder, the Model section the base model (standalone only), the Training section the
keys presets change and the output name, and the "Advanced" accordion everything else, grouped.
"""
from __future__ import annotations

import dataclasses
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from ..config import FIELDS, TrainConfig, dump_config, load_config
from ..errors import ConfigError
from ..utils.atomic import atomic_write_text

DATASET_KEYS = ("train_data_dir",)
MODEL_KEYS = ("base_model",)
MAIN_KEYS = ("output_name", "trigger_word", "lora_rank", "lora_alpha", "learning_rate", "epochs", "max_steps",
             "resolution", "batch_size", "output_dir")
NOT_IN_FORM = ("config_version",)
# Advanced groups start at these keys, in TrainConfig's field order.
GROUP_STARTS = {"train_data_dir": "Data", "base_model": "Model", "lora_rank": "LoRA",
                "batch_size": "Optimisation", "output_dir": "Output"}
# Said next to the field's own help text.
EXTRA_TIPS = {
    "lora_rank": "Out of memory: lower batch_size or the rank, or turn on gradient_checkpointing.",
    "gradient_checkpointing": "Out of memory? Turn this on first, then lower batch_size or lora_rank.",
    "resolution": "512 for SD1.x models. Out of memory: lower it (or use gradient_checkpointing).",
    "learning_rate": "Loss becomes nan or images look burnt: lower it. 1e-4 is a safe start.",
    "mixed_precision": "Loss becomes nan with fp16: try bf16 (newer GPUs) or no.",
    "max_steps": "Empty: train for `epochs` passes.",
    "output_dir": "Empty: a folder named after the LoRA in the default output place.",
}
DEFAULT_CONFIG_NAME = "train_config.yaml"


@dataclass(frozen=True)
class FieldSpec:
    """How one config key appears in the form."""

    name: str
    kind: str  # bool | choice | int | float | number_or_empty | text
    label: str
    tip: str
    choices: Tuple[str, ...] = ()
    optional: bool = False  # None is a valid value (shown as an empty box)
    default: Any = None  # the widget's initial value


def _hint(name: str) -> Tuple[Any, bool]:
    """(type, optional) of a TrainConfig field; a Union with None is optional."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else Union[rest]), True
    return hint, False


def _default(name: str) -> Any:
    f = FIELDS[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def field_spec(name: str) -> FieldSpec:
    """The widget description of config key `name`."""
    meta = FIELDS[name].metadata
    hint, optional = _hint(name)
    tip = " ".join(t for t in (meta.get("help", ""), EXTRA_TIPS.get(name, "")) if t)
    label = name
    if meta.get("choices"):
        choices = tuple(_choice_text(c) for c in meta["choices"])
        return FieldSpec(name, "choice", label, tip, choices, optional, _choice_text(_default(name)))
    if hint is bool:
        return FieldSpec(name, "bool", label, tip, default=bool(_default(name)))
    if hint in (int, float):
        if optional:
            return FieldSpec(name, "number_or_empty", label, tip, optional=True, default=to_form(name, _default(name)))
        return FieldSpec(name, hint.__name__, label, tip, default=_default(name))
    return FieldSpec(name, "text", label, tip, optional=optional, default=to_form(name, _default(name)))


def _choice_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def form_keys() -> List[str]:
    """Every config key that has a widget, in TrainConfig's order."""
    return [n for n in FIELDS if n not in NOT_IN_FORM]


def advanced_groups() -> List[Tuple[str, List[str]]]:
    """(group title, keys) for the Advanced accordion: every form key not shown in a section above."""
    placed = set(DATASET_KEYS + MODEL_KEYS + MAIN_KEYS)
    groups: List[Tuple[str, List[str]]] = []
    for name in form_keys():
        if name in GROUP_STARTS:
            groups.append((GROUP_STARTS[name], []))
        if name not in placed:
            groups[-1][1].append(name)
    return [(title, keys) for title, keys in groups if keys]


# ---------------------------------------------------------------------------- values
def to_form(name: str, value: Any) -> Any:
    """A config value as its widget shows it (a dict as `key=value key=value`, as kohya's --network_args)."""
    if FIELDS[name].metadata.get("choices"):
        return _choice_text(value)
    hint, optional = _hint(name)
    if typing.get_origin(hint) in (dict, Dict):
        return " ".join(f"{k}={v}" for k, v in (value or {}).items())
    if value is None:
        return ""
    if optional and hint in (int, float):
        return repr(value) if isinstance(value, float) else str(value)
    return value


def from_form(name: str, value: Any) -> Any:
    """A widget's value as the raw config value (validated later by config_from_dict)."""
    hint, optional = _hint(name)
    if isinstance(value, str) and typing.get_origin(hint) in (dict, Dict):
        return _key_values(value)
    if isinstance(value, str):
        value = value.strip()
        if value == "" and (optional or hint in (int, float)):
            return None
        if hint in (int, float) and not FIELDS[name].metadata.get("choices"):
            return _number(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _key_values(text: str) -> Union[Dict[str, Any], str]:
    """`conv_dim=4 algo=loha` -> {"conv_dim": 4, "algo": "loha"} (values read as YAML scalars); text that is
    not key=value pairs is returned as it is, for config_from_dict to name the key."""
    out: Dict[str, Any] = {}
    for pair in shlex.split(text):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            return text
        out[key] = yaml.safe_load(value) if value else None
    return out


def _number(text: str) -> Union[int, float, str]:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text  # config_from_dict names the key and says a number is expected


def raw_from_form(names: Sequence[str], values: Sequence[Any]) -> Dict[str, Any]:
    """Form values (in the order of `names`) -> a raw config dict; empty optional boxes are left out."""
    raw = {}
    for name, value in zip(names, values):
        value = from_form(name, value)
        if value is not None:
            raw[name] = value
    return raw


def form_from_config(names: Sequence[str], config: TrainConfig) -> List[Any]:
    """Widget values for every key in `names`, from a config."""
    return [to_form(name, getattr(config, name)) for name in names]


def make_config(service: Any, names: Sequence[str], values: Sequence[Any]) -> TrainConfig:
    """Validate the form into a TrainConfig through the service (which fills what the host decides)."""
    return service.make_config(raw_from_form(names, values))


# ---------------------------------------------------------------------------- YAML files and the CLI
def config_file_path(path: str, config: TrainConfig) -> Path:
    """Where Save writes: the given path, or `<output_dir>/train_config.yaml` when it is empty."""
    path = (path or "").strip()
    target = Path(path).expanduser() if path else Path(config.output_dir) / DEFAULT_CONFIG_NAME
    if target.is_dir():
        target = target / DEFAULT_CONFIG_NAME
    return target.resolve()


def save_config_file(service: Any, names: Sequence[str], values: Sequence[Any],
                     path: str) -> Tuple[Path, str]:
    """Validate the form and write it as YAML (the file `python -m lora_trainer train --config` reads)."""
    config = make_config(service, names, values)
    target = config_file_path(path, config)
    service.check_may_write(target)
    text = dump_config(config)
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise ConfigError(f"cannot write the config to {str(target)!r}: {exc.strerror or exc}") from None
    return target, text


def load_config_values(path: str, names: Sequence[str]) -> Tuple[Path, TrainConfig, List[Any]]:
    """Read a YAML config exactly as the CLI does: (its resolved path, the config, form values for `names`)."""
    path = (path or "").strip()
    if not path:
        raise ConfigError("config error: enter the path of a YAML config file to load")
    target = Path(path).expanduser().resolve()
    config = load_config(target)
    return target, config, form_from_config(names, config)


def cli_command(config_path: Optional[Path]) -> str:
    """The command that trains a saved config from a terminal."""
    if config_path is None:
        return "Save the config to get the command."
    return f"python -m lora_trainer train --config {shlex.quote(str(config_path))}"
