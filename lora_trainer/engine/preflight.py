"""Checks before anything is loaded: every input that could fail at save time (or make the run useless)
is refused here, in a second, instead of after the model loaded or hours into training."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..adapters import default_adapter_kinds
from ..config import TrainConfig
from ..data.scan import require_images
from ..errors import ConfigError, DatasetError, LoraTrainerError
from ..models.loading import check_base_model_path
from ..models.tokenizers import check_tokenizer, load_clip_tokenizer
from .checkpoint import state_path
from .disk_room import base_model_shapes, check_free_space, lora_params, need_bytes
from .optim import bitsandbytes_available
from .output_folder import check_name_fits, check_no_earlier_run, check_not_locked

MIN_FREE_BYTES = 64 * 1024 * 1024
SAVE_ITEMSIZE = {"fp16": 2, "bf16": 2, "fp32": 4}


def preflight(config: TrainConfig, check_model: bool = True, warn: Callable[[str], None] = lambda text: None,
              check_output: bool = True) -> None:
    """Cheap checks before anything is loaded: folders, model path, output folder and name, disk space, an
    earlier or live run in the folder, optional packages. `warn(text)` hears what is close but allowed.
    `check_output=False` (the data-parallel ranks that never write) leaves the output folder alone."""

    if not config.train_data_dir:
        raise DatasetError("train_data_dir is empty: give the folder of training images")
    require_images(Path(config.train_data_dir))
    if check_model:
        check_base_model_path(config.base_model)
        if config.tokenizer_path:
            tokenizer = load_clip_tokenizer(config.tokenizer_path, Path(config.base_model).parent)
            check_tokenizer(tokenizer, f"tokenizer_path {config.tokenizer_path!r}")
    default_adapter_kinds().spec_for(config)  # the adapter kind takes the config's network_args
    if config.optimizer == "adamw8bit" and not bitsandbytes_available():
        raise ConfigError("config error: optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes), "
                          "or use optimizer: adamw")
    if check_output:
        check_output_folder(config, check_model, warn)


def check_output_folder(config: TrainConfig, check_model: bool, warn: Callable[[str], None]) -> None:
    """The output folder of the process that writes: writable, the names fit, the state to resume exists, no
    live or earlier run in it, room for a checkpoint."""
    out = Path(config.output_dir)
    check_output_dir(out)
    check_name_fits(out, config.effective_output_name)
    if config.resume and not state_path(out, config.resume).is_file():
        raise ConfigError(f"config error: resume: no saved training state at {state_path(out, config.resume)} (a "
                          f"run saves it every save_steps and when stopped); set resume: false to start a new run")
    check_not_locked(out)
    check_no_earlier_run(out, config.effective_output_name, config.resume, config.overwrite)
    shapes = base_model_shapes(config.base_model) if check_model else None
    if shapes:
        params = lora_params(shapes, config.lora_rank, config.train_text_encoder)
        check_free_space(out, need_bytes(params, SAVE_ITEMSIZE[config.save_precision]), warn)


def check_output_dir(out: Path) -> None:
    """The output folder can be created, written, and has some room."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise LoraTrainerError(f"output_dir {str(out)!r} is not writable ({exc.strerror or exc})") from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise LoraTrainerError(f"output_dir {str(out)!r} has only {free // 2**20} MiB free; checkpoints need more")
