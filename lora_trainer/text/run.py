"""A whole text-model LoRA run from a TextTrainConfig: checks, data, model, loop, files.

`train_text(config, callbacks)` is what the CLI and the page call; `TextRun` exposes the steps one by one
(setup, train, save_final, close) for tests. Files (all inside output_dir): the adapter
(`adapter_model.safetensors` + `adapter_config.json`), `checkpoint-stepNNNNNNNN/` adapters, `state/` for
resuming, `config.yaml`, TensorBoard `logs/`, and with `merge: true` the merged model in `merged/`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from ..engine.checkpoint import STATE_DIR, STATE_FILE, load_state, state_path
from ..engine.optim import bitsandbytes_available
from ..engine.output_folder import FolderLock, check_not_locked
from ..engine.preflight import check_output_dir
from ..engine.schedule import schedule_length
from ..engine.tensorboard import TensorBoardLogger
from ..errors import ConfigError, DatasetError
from ..events import Callback, CheckpointSaved, Events, RunEnded, ValidationLoss
from ..utils.atomic import atomic_write_text
from ..utils.device import pick_device, pick_precision
from .batches import ExampleSet, split_validation, tokenize
from .config import TextTrainConfig, dump_text_config
from .data import data_files, read_records
from .model import (ADAPTER_WEIGHTS, SpecialTokens, add_lora, check_model_folder, load_causal_lm, load_tokenizer,
                    lora_targets, position_limit, read_model_config, resolve_max_seq_length, save_adapter, save_merged,
                    special_tokens)
from .state import model_identity, restore_text_state, run_fingerprint, save_text_state
from .trainer import TextTrainer

MERGED_DIR = "merged"


@dataclass
class TextData:
    """What the data side of a run needs: tokenizer, special tokens, sequence length, the examples."""

    tokenizer: Any
    special: SpecialTokens
    max_len: int
    position_limit: Optional[int]
    files: List[Path]
    train: ExampleSet
    validation: Optional[ExampleSet]


def prepare_data(config: TextTrainConfig) -> TextData:
    """Read and tokenize the training text (no model weights are loaded); clear errors for bad input."""
    folder = check_model_folder(config.base_model)
    model_config = read_model_config(folder)
    max_len = resolve_max_seq_length(config.max_seq_length, model_config, folder)
    tokenizer_folder = Path(config.tokenizer_path) if config.tokenizer_path else folder
    tokenizer = load_tokenizer(tokenizer_folder)
    special = special_tokens(tokenizer, config.add_eos, tokenizer_folder)
    files = data_files(config.train_data)
    examples = tokenize(read_records(config.train_data, config.txt_unit), tokenizer, max_len, special.eos_id,
                        config.packing, config.completion_only_loss, config.add_eos)
    if not examples.examples:
        raise DatasetError(f"train_data {config.train_data!r}: no example is left to train on: every prompt fills the "
                           f"whole max_seq_length of {max_len} tokens; raise max_seq_length or shorten the prompts")
    train_idx, val_idx = split_validation(len(examples), config.validation_split, config.seed)
    validation = examples.subset(val_idx) if val_idx else None
    return TextData(tokenizer, special, max_len, position_limit(model_config), files, examples.subset(train_idx),
                    validation)


def data_report(config: TextTrainConfig, data: TextData) -> List[str]:
    """What `check` prints and a run says at start."""
    s = data.train.stats
    sched = schedule_length(config, data.train)
    limit = f" (model limit {data.position_limit})" if data.position_limit else ""
    lines = [f"{len(data.files)} file(s): {s.documents} document(s), {s.pairs} prompt/completion pair(s), "
             f"{s.tokens} tokens",
             f"max_seq_length {data.max_len}{limit}; {len(data.train)} training sequence(s)"
             + (f", {len(data.validation)} held out for validation" if data.validation else "")
             + f"; {data.train.target_tokens(range(len(data.train)))} learned tokens",
             f"{sched['steps_per_epoch']} step(s) per epoch, {sched['total_steps']} step(s) in all"]
    if data.special.note:
        lines.append(data.special.note)
    return lines


def data_problems(data: TextData) -> List[str]:
    s = data.train.stats
    out = []
    if s.truncated:
        out.append(f"{len(s.truncated)} example(s) are longer than max_seq_length {data.max_len} and are cut: "
                   + ", ".join(s.truncated[:5]) + (" ..." if len(s.truncated) > 5 else ""))
    if s.skipped:
        out.append(f"{len(s.skipped)} pair(s) skipped: the prompt alone fills max_seq_length {data.max_len}: "
                   + ", ".join(s.skipped[:5]) + (" ..." if len(s.skipped) > 5 else ""))
    return out


def preflight(config: TextTrainConfig) -> None:
    """Cheap checks before anything is loaded: data, model folder, output folder, an earlier result."""
    data_files(config.train_data)
    check_model_folder(config.base_model)
    if config.optimizer == "adamw8bit" and not bitsandbytes_available():
        raise ConfigError("config error: optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes), "
                          "or use optimizer: adamw")
    out = Path(config.output_dir)
    if (out / ADAPTER_WEIGHTS).exists() and not config.resume and not config.overwrite:
        raise ConfigError(f"config error: output_dir {str(out)!r} already holds an adapter from an earlier run: set "
                          f"resume: true to continue that run, overwrite: true to replace it, or choose another "
                          f"output_dir")
    check_output_dir(out)
    check_not_locked(out)  # a live run (text or image) in this folder


@dataclass
class TextTrainResult:
    adapter_dir: Path
    steps: int
    losses: List[float]
    checkpoints: List[Path] = field(default_factory=list)
    stopped_early: bool = False
    merged_dir: Optional[Path] = None
    validation_loss: Optional[float] = None

    @property
    def lora_path(self) -> Path:
        """The adapter folder (the name the page's job status reads)."""
        return self.adapter_dir


class TextRun:
    """One text run, step by step: `setup()`, `train()`, `save_final()`, `close()`."""

    def __init__(self, config: TextTrainConfig, callbacks: Sequence[Callback] = (), tensorboard: bool = True):
        self.config = config
        self.events = Events(callbacks)
        self.output_dir = Path(config.output_dir)
        self.tensorboard = tensorboard
        self.checkpoints: List[Path] = []
        self.trainer: Optional[TextTrainer] = None
        self.data: Optional[TextData] = None
        self.validation_loss: Optional[float] = None
        self.lock: Optional[FolderLock] = None

    def setup(self) -> TextTrainer:
        cfg = self.config
        preflight(cfg)
        self.lock = FolderLock(self.output_dir).acquire()  # held to close(): one run per folder, as for images
        self.data = data = prepare_data(cfg)
        for line in data_report(cfg, data):
            self.events.say(line)
        for line in data_problems(data):
            self.events.say(line, logging.WARNING)
        device = pick_device(cfg.device)
        precision = pick_precision(cfg.mixed_precision, device)
        self.events.say(f"device {device}, precision {precision.name}")
        self._memory_advice()
        folder = Path(cfg.base_model)
        self.events.say(f"loading {folder}")
        model = load_causal_lm(folder.resolve(), precision.base_dtype)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()  # the embeddings are frozen: let the checkpointed blocks see grads
        targets, fan_in_fan_out = lora_targets(model, cfg.target_modules)
        model = add_lora(model, targets, fan_in_fan_out, cfg.lora_rank, cfg.effective_alpha, cfg.lora_dropout,
                         cfg.seed).to(device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.events.say(f"LoRA rank {cfg.lora_rank} on {', '.join(targets)}: {trainable:,} trainable parameters")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "config.yaml", dump_text_config(cfg))
        self.trainer = TextTrainer(cfg, model, data.train, data.special.pad_id, device, precision, self.events)
        self.trainer.setup()
        self.fingerprint = run_fingerprint(cfg, data.train, data.max_len, model_identity(folder))
        if cfg.resume:
            restore_text_state(self.trainer, load_state(state_path(self.output_dir, cfg.resume)), self.fingerprint)
            self.events.say(f"resuming at step {self.trainer.progress.step} of {self.trainer.schedule['total_steps']}")
        if self.tensorboard:
            self.events.add(TensorBoardLogger(self.output_dir / "logs", purge_step=self.trainer.progress.step + 1))
        return self.trainer

    def _memory_advice(self) -> None:
        """The planner's verdict at start (advice only: never stops a run)."""
        from .plan import plan_text

        try:
            verdict = plan_text(self.config)
        except Exception as exc:  # noqa: BLE001 - advice only
            self.events.say(f"memory plan unavailable: {exc}", logging.DEBUG)
            return
        if verdict.capacity is None or verdict.activations is None:
            return
        level = logging.WARNING if verdict.fits is False else logging.INFO
        self.events.say(f"memory plan: peak about {verdict.peak / 2**30:.2f} GiB of {verdict.capacity / 2**30:.1f} "
                        f"GiB" + "".join(f"; {a}" for a in verdict.advice), level)

    def train(self) -> None:
        assert self.trainer is not None, "call setup() first"
        self.trainer.run(on_checkpoint=self.save_checkpoint)

    def validate(self, step: int) -> None:
        if self.data.validation is None:
            return
        self.validation_loss = self.trainer.evaluation_loss(self.data.validation)
        self.events.emit(ValidationLoss(step, self.validation_loss))
        self.events.say(f"validation loss at step {step}: {self.validation_loss:.5f}")

    def save_checkpoint(self, step: int, epoch: int = 0, final: bool = False) -> Path:
        """An adapter (`checkpoint-stepNNNNNNNN/`, or the final one in output_dir) plus the state for resuming."""
        folder = self.output_dir if final else self.output_dir / f"checkpoint-step{step:08d}"
        self.validate(step)
        save_adapter(self.trainer.model, folder, scratch=self.output_dir)
        save_text_state(self.output_dir / STATE_DIR / STATE_FILE, self.trainer, self.fingerprint)
        self.checkpoints.append(folder)
        self.events.emit(CheckpointSaved(folder, step, final))
        return folder

    def save_final(self) -> TextTrainResult:
        p, total = self.trainer.progress, self.trainer.schedule["total_steps"]
        folder = self.save_checkpoint(p.step, p.epoch, final=True)
        stopped = p.step < total
        merged = None
        if stopped:
            self.events.say(f"stopped at step {p.step} of {total}; the adapter so far is in {folder}. To finish, "
                            f"train again with the same config and --set resume=true")
        elif self.config.merge:
            self.events.say("merging the adapter into the base model")
            merged = save_merged(self.trainer.model, self.data.tokenizer, self.output_dir / MERGED_DIR)
            self.events.say(f"merged model written to {merged}")
        return TextTrainResult(folder, p.step, list(p.losses), list(self.checkpoints), stopped, merged,
                               self.validation_loss)

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.model = None
        self.trainer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def train_text(config: TextTrainConfig, callbacks: Sequence[Callback] = ()) -> TextTrainResult:
    """Train a text-model LoRA as described by `config`; returns where the adapter was written."""
    run = TextRun(config, callbacks)
    result = None
    try:
        run.setup()
        run.train()
        result = run.save_final()
        loss = result.losses[-1] if result.losses else None
        run.events.emit(RunEnded(result.adapter_dir, result.steps, result.stopped_early, {"loss": loss}))
        return result
    finally:
        if result is None:
            run.events.emit(RunEnded(None, run.trainer.progress.step if run.trainer else 0, True))
        run.close()
