"""Training state of a text run on disk (`output_dir/state/training_state.pt`) for exact resumption.

It holds the LoRA weights (fp32), optimizer, LR schedule, grad scaler, the step counter, the losses and
the micro-batch size (out-of-memory recovery may have lowered it). Data order and dropout are
counter-based (seeded from the step), so the step alone fixes the rest. A fingerprint of everything that
decides the run's numbers is checked on resume (engine/checkpoint.check_compatible names each change).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

import torch

from ..engine.checkpoint import check_compatible, restore_loop_state
from ..errors import ConfigError
from ..utils.atomic import atomic_path
from .batches import ExampleSet
from .model import load_trainable_state, trainable_state

STATE_VERSION = 1
BREAKING_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules", "seed", "batch_size",
                 "gradient_accumulation_steps", "packing", "completion_only_loss", "add_eos", "txt_unit",
                 "validation_split", "optimizer")


def examples_fingerprint(examples: ExampleSet) -> str:
    """Hash of every training example's tokens and labels."""
    h = hashlib.sha256()
    for e in examples.examples:
        h.update(json.dumps([e.input_ids, e.labels]).encode())
    return h.hexdigest()


def model_identity(folder: Path) -> str:
    """A cheap id of the base model: its folder name, config.json and the sizes of its weight files."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"{folder.name}:{h.hexdigest()[:16]}"


def run_fingerprint(config, examples: ExampleSet, max_len: int, model_id: str) -> Dict[str, Any]:
    fp = {key: getattr(config, key) for key in BREAKING_KEYS}
    fp.update(max_seq_length=max_len, examples=examples_fingerprint(examples), model=model_id)
    return json.loads(json.dumps(fp, sort_keys=True, default=str))


def save_text_state(path: Path, trainer, fingerprint: Dict[str, Any]) -> Path:
    """Write the trainer's full state atomically."""
    p = trainer.progress
    state = {
        "version": STATE_VERSION,
        "task": "text",
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "step": p.step,
        "samples_seen": p.samples_seen,
        "losses": torch.tensor(p.losses, dtype=torch.float64),
        "nonfinite_steps": p.nonfinite_steps,
        "consecutive_nonfinite": p.consecutive_nonfinite,
        "micro_batch_size": trainer.micro_batch_size,
        "lora": trainable_state(trainer.model),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))
    return path


def restore_text_state(trainer, state: Dict[str, Any], fingerprint: Dict[str, Any]) -> None:
    """Put a saved state into a set-up trainer, after checking it is the same run."""
    if state.get("task") != "text":
        raise ConfigError("config error: resume: the saved state in output_dir is not from a text run; start a new "
                          "run (resume: false) or pick another output_dir")
    saved = json.loads(state["fingerprint"])
    if saved.pop("examples", None) != fingerprint.get("examples"):
        raise ConfigError("config error: resume: cannot continue this run exactly: the training text (or how it is "
                          "tokenized) changed. Restore it, or start a new run (resume: false)")
    check_compatible(saved, {k: v for k, v in fingerprint.items() if k != "examples"})
    load_trainable_state(trainer.model, state["lora"])
    restore_loop_state(trainer, state)
    trainer.progress.consecutive_nonfinite = int(state["consecutive_nonfinite"])
    trainer.micro_batch_size = int(state["micro_batch_size"])
