"""The base causal language model and its tokenizer from a local folder, LoRA layers on it (peft), and
the adapter / merged-model folders written from it.

Works with transformers 4.30 + peft 0.13 (the WebUI's pins) and transformers 5 + peft 0.21. LoRA targets
are found from the model itself: every linear layer of the transformer blocks (torch Linear, or GPT-2's
transformers Conv1D, whose weight is stored transposed: peft's `fan_in_fan_out`), never the output head.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import ConfigError, ModelLoadError
from ..utils.atomic import atomic_folder

DEFAULT_MAX_SEQ_LENGTH = 1024
LIMIT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def check_model_folder(path: Union[str, Path]) -> Path:
    """The model folder, or ModelLoadError saying what is missing."""
    folder = Path(path)
    if not str(path):
        raise ModelLoadError("base_model is empty: give the folder of a causal language model saved with "
                             "save_pretrained (config.json, weights, tokenizer files)")
    if not folder.exists():
        raise ModelLoadError(f"base_model {str(folder)!r} does not exist: give a local model folder (config.json, "
                             f"weights, tokenizer files), e.g. one downloaded with huggingface-cli download")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelLoadError(f"base_model {str(folder)!r} is not a Hugging Face model folder (no config.json in it)")
    return folder


def read_model_config(folder: Path) -> Dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'} cannot be read ({exc})") from None


def position_limit(model_config: Dict[str, Any]) -> Optional[int]:
    """The longest sequence the model's position embeddings cover, from config.json (None if it does not say)."""
    for key in LIMIT_KEYS:
        value = model_config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_max_seq_length(requested: Optional[int], model_config: Dict[str, Any], folder: Path) -> int:
    """max_seq_length, or the model's limit (at most DEFAULT_MAX_SEQ_LENGTH) when unset; refuses one over the limit."""
    limit = position_limit(model_config)
    if requested is None:
        return min(limit or DEFAULT_MAX_SEQ_LENGTH, DEFAULT_MAX_SEQ_LENGTH)
    if limit is not None and requested > limit:
        raise ConfigError(f"config error: max_seq_length: {requested} is over the model's limit of {limit} positions "
                          f"({folder / 'config.json'}); use at most {limit}")
    return requested


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - missing files, unknown classes, a missing sentencepiece ...
        raise ModelLoadError(f"no usable tokenizer in {folder} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                             f"save it there with tokenizer.save_pretrained, or set tokenizer_path") from None


@dataclass(frozen=True)
class SpecialTokens:
    pad_id: int
    eos_id: Optional[int]
    note: str = ""  # said once at start when the pad token is borrowed


def special_tokens(tokenizer: Any, add_eos: bool, where: Path) -> SpecialTokens:
    """The pad and end-of-text ids. Without a pad token, padding uses eos (padding is masked and never learned,
    so any id works); without eos, documents cannot be ended: refused unless add_eos is off."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None and add_eos:
        raise ModelLoadError(f"the tokenizer in {where} has no end-of-text (eos) token, so documents and completions "
                             f"cannot be ended: set add_eos: false, or use a tokenizer that has one")
    if pad is not None:
        return SpecialTokens(pad, eos)
    if eos is not None:
        return SpecialTokens(eos, eos, f"the tokenizer has no pad token: padding uses its end-of-text token "
                                       f"{tokenizer.eos_token!r} (masked out, never learned)")
    return SpecialTokens(0, None, "the tokenizer has no pad or end-of-text token: padding uses id 0 (masked out)")


def _dtype_kwargs(dtype: torch.dtype) -> Dict[str, Any]:
    import transformers

    return {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}


def load_causal_lm(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The model of `folder` in `dtype`, frozen, in eval mode; ModelLoadError naming what is wrong."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **_dtype_kwargs(dtype))
    except ValueError as exc:  # an architecture AutoModelForCausalLM does not know
        kind = read_model_config(folder).get("model_type", "?")
        raise ModelLoadError(f"{folder} (model_type {kind!r}) is not a causal language model this transformers "
                             f"can load: {str(exc).splitlines()[0][:200]}") from None
    except (OSError, EnvironmentError) as exc:
        raise ModelLoadError(f"the weights in {folder} cannot be loaded: {str(exc).splitlines()[0][:200]}") from None
    model.requires_grad_(False)
    model.eval()
    return model


def _linear_kinds() -> Tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return torch.nn.Linear, Conv1D


def lora_targets(model: torch.nn.Module, requested: Union[str, Sequence[str]]) -> Tuple[List[str], bool]:
    """(layer names for peft's target_modules, fan_in_fan_out): every linear layer except the output head for
    "auto", else the requested names, each checked against the model."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _linear_kinds()) and m is not head}
    leaf = {name.rsplit(".", 1)[-1] for name in layers}
    head_name = next((n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head and head is not None), None)
    if requested == "auto":
        names = sorted(leaf)
        if head_name in leaf:
            raise ConfigError(f"config error: target_modules: the output head and other layers share the name "
                              f"{head_name!r}; list the layers to train, e.g. [{', '.join(sorted(leaf - {head_name}))}]")
        if not names:
            raise ModelLoadError(f"{type(model).__name__} has no linear layers that LoRA can train")
    else:
        names = [requested] if isinstance(requested, str) else list(requested)
        missing = [n for n in names if n not in leaf and n not in layers]
        if missing:
            raise ConfigError(f"config error: target_modules: {', '.join(missing)} not found in "
                              f"{type(model).__name__}; its linear layers are named {', '.join(sorted(leaf))}")
    chosen = [m for name, m in layers.items() if name.rsplit(".", 1)[-1] in names or name in names]
    return names, bool(chosen) and all(isinstance(m, Conv1D) for m in chosen)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft 0.21 reads a transformers 5 property that warns of its own rename: nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def add_lora(model: torch.nn.Module, targets: List[str], fan_in_fan_out: bool, rank: int, alpha: float,
             dropout: float, seed: int) -> torch.nn.Module:
    """The peft model with LoRA layers on `targets`; LoRA weights in fp32 (seeded), everything else frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # LoRA A matrices are initialised from the global RNG
    with quiet_peft():
        peft_model = get_peft_model(model, config)
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return peft_model


def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The LoRA weights by parameter name (fp32 copies on the CPU)."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        raise ConfigError("config error: resume: the saved LoRA weights do not match this model's LoRA layers; "
                          "start a new run (resume: false)")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def save_adapter(peft_model: Any, folder: Path, scratch: Optional[Path] = None) -> Path:
    """adapter_model.safetensors + adapter_config.json (what `PeftModel.from_pretrained` reads), written
    atomically (file by file, the config last) through a temp folder in `scratch` (default: beside `folder`)."""
    with atomic_folder(folder, last=(ADAPTER_CONFIG,), scratch=scratch) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        if not (tmp / ADAPTER_WEIGHTS).is_file():  # very old peft wrote adapter_model.bin
            raise ModelLoadError(f"peft did not write {ADAPTER_WEIGHTS}; install peft >= 0.6")
    return folder


def save_merged(peft_model: Any, tokenizer: Any, folder: Path) -> Path:
    """The base model with the adapter merged in, plus the tokenizer, as a plain transformers folder. The
    LoRA layers are folded into the weights in place: call last."""
    import inspect

    merged = peft_model.merge_and_unload()
    kwargs = {"safe_serialization": True} if "safe_serialization" in inspect.signature(
        merged.save_pretrained).parameters else {}
    with atomic_folder(folder, last=("config.json",)) as tmp:
        merged.save_pretrained(str(tmp), **kwargs)
        tokenizer.save_pretrained(str(tmp))
    return folder
