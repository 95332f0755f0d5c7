"""Training state on disk (`output_dir/state/`) for exact resumption, and the checks that make it safe.

The state holds everything a run needs to continue bit-identically: LoRA weights (fp32), optimizer,
LR schedule, grad scaler, RNG states, the step counter and the micro-batch size (which out-of-memory
recovery may have lowered). Data order and noise are counter-based (utils/seeding), so the step alone
fixes them. The state also records a fingerprint of what must not change between the two halves of a
run (rank, model, dataset contents ...); resuming with a different one is refused with the reason.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Dict, List

import torch

from ..errors import ConfigError
from ..utils.atomic import atomic_path

STATE_DIR = "state"
STATE_FILE = "training_state.pt"
STATE_VERSION = 1

# Keys whose change makes an exact continuation impossible (data order, shapes, model).
BREAKING_KEYS = ("lora_rank", "lora_alpha", "train_text_encoder", "seed", "batch_size",
                 "gradient_accumulation_steps", "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                 "bucket_reso_steps", "bucket_no_upscale", "flip_aug", "shuffle_caption", "keep_tokens",
                 "caption_dropout_rate", "trigger_word", "clip_skip", "init_lora", "optimizer", "network_type",
                 "network_args")
# What a state saved before a key above existed was trained with.
BEFORE_KEY_EXISTED = {"network_type": "lora", "network_args": {}}


def state_path(output_dir: Path, resume: Any = True) -> Path:
    """Where the state is (resume: true -> output_dir/state/training_state.pt; a path -> that file/folder)."""
    if isinstance(resume, str) and resume not in ("true", "True"):
        p = Path(resume)
        return p / STATE_FILE if p.is_dir() else p
    return Path(output_dir) / STATE_DIR / STATE_FILE


def dataset_fingerprint(dataset) -> str:
    """Hash of the training images' contents, repeats and captions."""
    h = hashlib.sha256()
    for r in dataset.records:
        h.update(f"{r.rel}|{r.sha256}|{r.repeats}|{r.caption}\n".encode())
    return h.hexdigest()


def run_fingerprint(config, dataset, model_id: str) -> Dict[str, Any]:
    fp = {key: getattr(config, key) for key in BREAKING_KEYS}
    fp["dataset"] = dataset_fingerprint(dataset)
    fp["model"] = model_id
    return fp


def check_compatible(saved: Dict[str, Any], current: Dict[str, Any]) -> None:
    """Refuse to resume when something that decides the run's numbers changed; name every change."""
    changes: List[str] = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            if key == "dataset":
                changes.append("the training images or captions changed")
            elif key == "model":
                changes.append("the base model changed")
            else:
                changes.append(f"{key} changed from {saved.get(key)!r} to {current.get(key)!r}")
    if changes:
        raise ConfigError("config error: resume: cannot continue this run exactly: " + "; ".join(changes) +
                          ". Restore those settings, or start a new run (set resume: false, or use init_lora "
                          "to continue from the saved LoRA with a fresh optimizer)")


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, trainer, fingerprint: Dict[str, Any]) -> Path:
    """Write the trainer's full state atomically."""
    p = trainer.progress
    state = {
        "version": STATE_VERSION,
        "fingerprint": json.dumps(fingerprint, sort_keys=True, default=str),
        "step": p.step,
        "samples_seen": p.samples_seen,
        "losses": torch.tensor(p.losses, dtype=torch.float64),
        "nonfinite_steps": p.nonfinite_steps,
        "micro_batch_size": trainer.micro_batch_size,
        "world_size": trainer.dist.world_size,  # data-parallel processes: batch_size * world_size per batch
        "gradient_checkpointing_forced": trainer.forced_checkpointing,
        "lora": trainer.network.kohya_state_dict(torch.float32),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))
    return path


def load_state(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config error: resume: no saved training state at {path} (a run saves it every "
                          f"save_steps and when stopped); set resume: false to start a new run")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged state file is reported, not crashed on
        raise ConfigError(f"config error: resume: {path} cannot be read ({exc})".splitlines()[0]) from None


def restore_loop_state(trainer, state: Dict[str, Any]) -> None:
    """The optimizer, the scheduler, the grad scaler and the progress counters of a saved state, put into a
    trainer (the image and the text trainers keep them under the same names)."""
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    p = trainer.progress
    p.step = int(state["step"])
    p.samples_seen = int(state["samples_seen"])
    p.losses = [float(x) for x in state["losses"].tolist()]
    p.nonfinite_steps = int(state.get("nonfinite_steps", 0))


def restore_trainer(trainer, state: Dict[str, Any], fingerprint: Dict[str, Any]) -> None:
    """Put a saved state into a set-up trainer (after checking the run is the same run)."""
    saved = {**BEFORE_KEY_EXISTED, **json.loads(state["fingerprint"])}
    check_compatible(saved, json.loads(json.dumps(fingerprint, sort_keys=True, default=str)))
    trainer.network.load_kohya_state_dict(state["lora"])
    restore_loop_state(trainer, state)
    trainer._nonfinite_total.fill_(trainer.progress.nonfinite_steps)
    trainer.micro_batch_size = int(state["micro_batch_size"])
    if state.get("gradient_checkpointing_forced"):
        trainer.force_gradient_checkpointing()
    set_rng_state(state["rng"])


def model_identity(base_model: str, bundle_name: str) -> str:
    """A cheap id of the base model: the file's name and size (or the folder's name)."""
    p = Path(base_model)
    if p.is_file():
        return f"{p.name}:{p.stat().st_size}"
    return p.name or bundle_name

