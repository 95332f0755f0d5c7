"""A whole training run from a TrainConfig: checks, data, model, loop, files.

`train(config)` is what the CLI, the UI and the WebUI tab call. `LoraRun` exposes the same steps one by
one (setup, train, save, close) for callers that need the live model in between (tests, samplers).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..adapters import default_adapter_kinds
from ..config import TrainConfig, dump_config
from ..data.buckets import BucketSettings
from ..data.dataset import CaptionSettings, TrainingSet
from ..data.doctor import DatasetReport, build_report
from ..data.scan import scan_dataset
from ..errors import LoraTrainerError, TrainingStopped
from ..events import Callback, CheckpointSaved, Events, RunEnded, SampleImages, ValidationLoss
from ..formats.kohya import load_kohya_lora, save_kohya_lora
from ..formats.metadata import training_metadata
from ..formats.sidecar import write_preview, write_sidecar
from ..models import default_families
from ..models.bundle import ModelBundle
from ..utils.atomic import atomic_write_text, atomic_write_with
from ..utils.device import Precision, pick_device, pick_precision, precision_for_weights
from ..utils.seeding import seed_everything
from .advice import long_caption_warning, memory_advice, rank_limit_warning
from .checkpoint import load_state, model_identity, restore_trainer, run_fingerprint, save_state, state_path
from .disk_room import check_room_for_run
from .distributed import SINGLE, Distributed
from .output_folder import (FolderLock, check_no_earlier_run, delete_earlier_run, describe, effective_config,
                            resume_command, step_checkpoint_name)
from .preflight import preflight
from .sampling import isolated_rng, sample_path, sample_prompts_from_config
from .validation import OverfitDetector, Validator, as_metadata, split_validation
from .tensorboard import TensorBoardLogger
from .trainer import Trainer

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TrainResult:
    lora_path: Path
    output_dir: Path
    steps: int
    losses: List[float]
    checkpoints: List[Path] = field(default_factory=list)
    stopped_early: bool = False
    report: Optional[DatasetReport] = None


def build_training_set(config: TrainConfig, require_captions: bool = True) -> TrainingSet:
    """Scan the folder and wrap it with the config's bucket and caption settings.

    `require_captions=False` (the page's Scan) keeps uncaptioned images so the report can list them.
    """
    scan = scan_dataset(config.train_data_dir, config.metadata_path, config.caption_extension,
                        config.trigger_word, require_captions=require_captions)
    buckets = BucketSettings(config.resolution, config.bucket_reso_steps, config.min_bucket_reso,
                             config.max_bucket_reso, config.bucket_no_upscale, config.enable_bucket)
    captions = CaptionSettings(config.trigger_word, config.shuffle_caption, config.keep_tokens,
                               config.caption_dropout_rate)
    return TrainingSet(scan, buckets, captions, config.flip_aug)


def split_datasets(config: TrainConfig, dataset: TrainingSet):
    """(training set, validation set or None) from validation_split or validation_dir."""
    if config.validation_dir:
        scan = scan_dataset(config.validation_dir, None, config.caption_extension, config.trigger_word)
        return dataset, TrainingSet(scan, dataset.bucket_settings, dataset.caption_settings, False)
    if config.validation_split > 0:
        train_idx, val_idx = split_validation(dataset.records, config.validation_split, config.seed)
        if val_idx:
            return dataset.subset(train_idx), dataset.subset(val_idx, flip_aug=False)
    return dataset, None


def load_model(config: TrainConfig) -> ModelBundle:
    from ..models.loading import load_bundle

    return load_bundle(config.base_model, default_families(), config.tokenizer_path, config.base_model_config,
                       config.clip_skip, config.prediction_type)


class LoraRun:
    """One training run, step by step: `setup()`, `train()`, `save_final()`, `close()`. In a data-parallel
    run (`dist`) every rank computes the same; only rank 0 writes files."""

    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback] = (), bundle: Optional[ModelBundle] = None,
                 tensorboard: bool = True, dist: Distributed = SINGLE, free_encoders: bool = False):
        self.config = config
        # a one-shot run (`train()`) on a model it loads itself frees the encoders once their caches are full
        self.free_encoders = free_encoders and bundle is None
        self.dist = dist
        self.events = Events(callbacks)
        self.bundle = bundle
        self.output_dir = Path(config.output_dir)
        self.checkpoints: List[Path] = []
        self.started_at = time.time()
        self.trainer: Optional[Trainer] = None
        self.report: Optional[DatasetReport] = None
        self.tensorboard = tensorboard
        self.fingerprint: Dict[str, Any] = {}
        self.validation_set: Optional[TrainingSet] = None
        self.validator: Optional[Validator] = None
        self.overfit = OverfitDetector()
        self.sample_prompts: List = []
        self.latest_sample: Optional[Path] = None
        self.checkpoint_steps: Dict[int, Path] = {}
        self.lock: Optional[FolderLock] = None
        self.resumed_step: Optional[int] = None
        self.replaced: List[Path] = []  # an earlier run's files that overwrite deletes (rank 0)

    # ------------------------------------------------------------------ steps
    def setup(self) -> Trainer:
        cfg = self.config
        self.dist.from_main(self._claim_output)  # rank 0 checks and locks the folder; every rank hears its verdict
        if not self.dist.is_main:
            preflight(cfg, check_model=self.bundle is None, check_output=False)
        seed_everything(cfg.seed)
        dataset, self.validation_set = split_datasets(cfg, build_training_set(cfg))
        self.report = build_report(dataset, cfg.batch_size * self.dist.world_size, cfg.gradient_accumulation_steps,
                                   broken=dataset.scan.broken)
        for line in self.report.summary_lines():
            self.events.say(line)
        for line in self.report.problem_lines():
            self.events.say(line, logging.WARNING)
        if self.bundle is None:
            self.events.say(f"loading {cfg.base_model}")
            self.bundle = load_model(cfg)
        device, precision = self._place()
        self._say_warning(long_caption_warning(dataset, self.bundle))
        if self.dist.is_main:
            self._start_output()
        renders = bool(sample_prompts_from_config(cfg)) or self.validation_set is not None
        self.trainer = Trainer(cfg, dataset, self.bundle, device, precision, self.events, self.dist,
                               release_encoders=self.free_encoders and not renders)
        init, init_meta = self._read_init_lora()
        self.trainer.setup(default_adapter_kinds().file_spec(init, cfg.init_lora, cfg.lora_dropout, init_meta)
                           if init else None)
        self._say_warning(rank_limit_warning(self.trainer.network, cfg.lora_rank))
        if init:
            self.trainer.network.load_kohya_state_dict(init)
            self.events.say(f"continuing from {cfg.init_lora} (rank {self.trainer.network.rank}, alpha "
                            f"{self.trainer.network.alpha:g}); optimizer and step counter start fresh")
        self.fingerprint = run_fingerprint(cfg, dataset, model_identity(cfg.base_model, self.bundle.name))
        if cfg.resume:
            self._resume()
        if self.dist.is_main:
            self._check_room()
        self.sample_prompts = sample_prompts_from_config(cfg)
        if self.validation_set is not None:
            self.validator = Validator(self.trainer, self.validation_set, seed=cfg.seed)
            self.events.say(f"validation: {len(self.validation_set)} held-out image(s), loss at every save")
        if self.tensorboard and self.dist.is_main:
            self.events.add(TensorBoardLogger(self.output_dir / "logs", purge_step=self.trainer.progress.step + 1))
        return self.trainer

    def _claim_output(self) -> None:
        """The checks of the one process that writes (rank 0), output folder included; then it takes the
        folder lock and notes what an overwrite will delete. Other ranks never lock nor check the folder."""
        cfg = self.config
        preflight(cfg, check_model=self.bundle is None, warn=lambda text: self.events.say(text, logging.WARNING))
        self.lock = FolderLock(self.output_dir).acquire()
        self.replaced = check_no_earlier_run(self.output_dir, cfg.effective_output_name, cfg.resume, cfg.overwrite)

    def _start_output(self) -> None:
        """The run's first writes (rank 0): delete what overwrite replaces, then the effective config.yaml."""
        if self.replaced:
            self.events.say(f"overwrite: deleting the earlier run's {describe(self.replaced)} in {self.output_dir}",
                            logging.WARNING)
            delete_earlier_run(self.replaced)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "config.yaml", dump_config(effective_config(self.config)))

    def _place(self) -> Tuple[torch.device, Precision]:
        """The device and precision of this run (this rank's GPU in a data-parallel run), said at start."""
        cfg = self.config
        placement = self.bundle.fixed_placement
        if placement is not None:
            device = placement[0]
            precision = precision_for_weights(placement[1], device, cfg.mixed_precision)
        else:
            device = self.dist.device(pick_device(cfg.device))
            precision = pick_precision(cfg.mixed_precision, device)
        self.events.say(f"device {device}, precision {precision.name}")
        if self.dist.active:
            self.events.say(f"data parallel: {self.dist.world_size} processes x batch_size {cfg.batch_size} x "
                            f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} = global batch "
                            f"{self.global_batch_size}")
        if device.type == "cuda" and placement is None:
            self.events.say(*memory_advice(cfg))
        return device, precision

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.config.batch_size * self.dist.world_size * self.config.gradient_accumulation_steps

    def _resume(self) -> None:
        """Continue from the saved state: rank 0 reads it, every rank restores it."""
        state = self.dist.from_main(lambda: load_state(state_path(self.output_dir, self.config.resume)))
        restore_trainer(self.trainer, state, self.fingerprint)
        self.resumed_step = self.trainer.progress.step
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            self.events.say(f"resume: the state was saved by {saved_world} process(es) and this run has "
                            f"{self.dist.world_size}: the global batch changed, so from here on the run is not "
                            f"the one an unchanged run would have been", logging.WARNING)
        self.events.say(f"resuming at step {self.trainer.progress.step} of {self.trainer.schedule['total_steps']}")

    def _read_init_lora(self) -> Tuple[Optional[Dict[str, torch.Tensor]], Dict[str, str]]:
        """The tensors and metadata of `init_lora` (the metadata says a LyCORIS file's conv_dim and factor)."""
        if not self.config.init_lora:
            return None, {}
        return load_kohya_lora(self.config.init_lora)

    def _check_room(self) -> None:
        """Enough free disk for every checkpoint and the training state, before any step is spent."""
        total, every = self.trainer.schedule["total_steps"], self.config.save_steps
        check_room_for_run(self.output_dir, sum(p.numel() for p in self.trainer.network.parameters()),
                           SAVE_DTYPES[self.config.save_precision].itemsize, 1 + (total // every if every else 0))

    def _say_warning(self, text: Optional[str]) -> None:
        if text:
            self.events.say(text, logging.WARNING)

    def train(self) -> None:
        assert self.trainer is not None, "call setup() first"
        try:
            self.trainer.run(on_checkpoint=self.save_checkpoint,
                             on_sample=self.take_samples if self.sample_prompts else None)
        except TrainingStopped as exc:
            raise TrainingStopped(f"{exc} {self.kept()}") from None

    def kept(self) -> str:
        """What of this run is on disk, and how to go on from it (for messages after a failure)."""
        if self.checkpoint_steps:
            step = max(self.checkpoint_steps)
            what = f"{self.checkpoint_steps[step]} and the training state of step {step}"
        elif self.resumed_step is not None:
            what = f"the training state of step {self.resumed_step} that this run resumed from"
        else:
            return "No checkpoint of this run was saved (save_steps saves them along the way)."
        return f"Kept: {what}; continue with: {self.resume_hint()}"

    def resume_hint(self) -> str:
        """The command that continues this run (with as many processes as it had)."""
        return resume_command(self.output_dir, self.dist.world_size, self.dist.several_machines)

    # ------------------------------------------------------------------ samples and validation
    def take_samples(self, step: int) -> List[Path]:
        """Render the sample prompts with the current weights into samples/; training randomness is untouched."""
        network = self.trainer.network
        was_training = network.training
        network.train(False)
        try:
            with isolated_rng(), torch.no_grad():
                images = self.bundle.sample(self.sample_prompts)
        except LoraTrainerError as exc:
            self.events.say(f"samples skipped: {exc}", logging.WARNING)
            return []
        finally:
            network.train(was_training)
        if not self.dist.is_main:  # every rank renders (no rank waits on another), rank 0 writes
            return []
        folder = self.output_dir / "samples"
        paths = []
        for i, image in enumerate(images):
            path = sample_path(folder, step, i)
            atomic_write_with(path, lambda tmp, im=image: im.save(tmp, format="PNG"))
            paths.append(path)
        self.latest_sample = paths[0] if paths else self.latest_sample
        self.events.emit(SampleImages(step, paths))
        return paths

    def validate(self, step: int) -> Dict[str, str]:
        """Validation loss of the current weights (metadata for the checkpoint) and the overfitting check."""
        if self.validator is None:
            return {}
        value = self.validator.loss()
        recent = self.trainer.progress.losses[-max(1, self.config.save_steps or 10):]
        warning = self.overfit.update(step, value, sum(recent) / max(1, len(recent)))
        self.events.emit(ValidationLoss(step, value))
        self.events.say(f"validation loss at step {step}: {value:.5f}")
        if warning:
            self.events.say(warning, logging.WARNING)
        return as_metadata(value)

    # ------------------------------------------------------------------ files
    @property
    def lora_path(self) -> Path:
        return self.output_dir / f"{self.config.effective_output_name}.safetensors"

    def metadata(self, step: int, epoch: int, extra: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
        extra = {"ss_total_batch_size": str(self.global_batch_size), **(extra or {})}
        return training_metadata(config=self.config, family=self.bundle.family,
                                 prediction_type=self.bundle.prediction_type, base_model_name=self.bundle.name,
                                 started_at=self.started_at, steps=step, epoch=epoch,
                                 dataset=self.trainer.dataset, extra=extra, network=self.trainer.network.spec)

    def save_lora(self, path: Path, step: int, epoch: int, extra: Optional[Dict[str, str]] = None) -> Path:
        tensors = self.trainer.network.kohya_state_dict(SAVE_DTYPES[self.config.save_precision])
        return save_kohya_lora(path, tensors, self.metadata(step, epoch, extra))

    def save_checkpoint(self, step: int, epoch: int, final: bool = False) -> Path:
        """A LoRA file (`<name>-stepNNNNNNNN` or the final `<name>`) plus the training state for resuming
        (written by rank 0 alone)."""
        name = self.config.effective_output_name
        path = self.lora_path if final else self.output_dir / step_checkpoint_name(name, step)
        extra = self.validate(step)
        if self.dist.is_main:
            self._write_checkpoint(path, step, epoch, extra)
        self.checkpoints.append(path)
        self.checkpoint_steps[step] = path
        if self.dist.is_main:
            self.events.emit(CheckpointSaved(path, step, final))
        return path

    def _write_checkpoint(self, path: Path, step: int, epoch: int, extra: Optional[Dict[str, str]]) -> None:
        try:
            self.save_lora(path, step, epoch, extra)
        except OSError as exc:
            raise LoraTrainerError(f"could not write {path} at step {step} ({exc.strerror or exc}). "
                                   f"{self.kept()}") from None
        try:
            save_state(state_path(self.output_dir), self.trainer, self.fingerprint)
        except OSError as exc:
            raise LoraTrainerError(f"{path} was written, but the training state of step {step} could not be "
                                   f"({exc.strerror or exc}). {self.kept()}") from None

    def save_final(self) -> Path:
        p = self.trainer.progress
        path = self.save_checkpoint(p.step, p.epoch + 1, final=True)
        if not self.dist.is_main:
            return path
        total = self.trainer.schedule["total_steps"]
        if p.step < total:
            self.events.say(f"stopped at step {p.step} of {total}; the LoRA so far is {path}. To finish this run: "
                            f"{self.resume_hint()}")
        if self.latest_sample is not None:
            from PIL import Image

            with Image.open(self.latest_sample) as im:
                write_preview(path, im.copy())
        best = self.overfit.best()
        if best is not None:
            self.events.say(f"lowest validation loss {best[1]:.5f} at step {best[0]}: "
                            f"{self.checkpoint_steps.get(best[0], path).name}")
        write_sidecar(path, sd_version=self.bundle.family.sd_version, activation_text=self.config.trigger_word or "",
                      preferred_weight=self.config.preferred_weight,
                      description=f"Trained with lora_trainer on {self.trainer.dataset.samples_per_epoch} "
                                  f"images x repeats, {p.step} steps.")
        return path

    def close(self) -> None:
        """Remove the LoRA layers, let the bundle restore itself, and release the output folder."""
        try:
            if self.trainer is not None and self.trainer.network is not None:
                self.trainer.network.remove()
            if self.bundle is not None:
                self.bundle.restore()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def result(self, path: Path, stopped_early: bool) -> TrainResult:
        p = self.trainer.progress
        return TrainResult(path, self.output_dir, p.step, list(p.losses), list(self.checkpoints), stopped_early,
                           self.report)


def train(config: TrainConfig, callbacks: Sequence[Callback] = (), bundle: Optional[ModelBundle] = None,
          on_ready: Optional[Callable[[LoraRun], None]] = None, dist: Distributed = SINGLE) -> TrainResult:
    """Train a LoRA as described by `config`; returns where it was written (`dist`: this process's rank in a
    data-parallel run, engine/distributed)."""
    run = LoraRun(config, callbacks, bundle, dist=dist, free_encoders=True)
    path = None
    try:
        run.setup()
        if on_ready:
            on_ready(run)
        run.train()
        path = run.save_final()
        p = run.trainer.progress
        stopped = p.step < run.trainer.schedule["total_steps"]
        result = run.result(path, stopped)
        run.events.emit(RunEnded(path, p.step, stopped, {"loss": p.losses[-1] if p.losses else None}))
        return result
    finally:
        run.close()
        if path is None:
            run.events.emit(RunEnded(None, run.trainer.progress.step if run.trainer else 0, True))
