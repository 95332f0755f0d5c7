"""The text trainer's loop. For each optimizer step: the step's batches (a pure function of seed and step),
forward, token-level cross-entropy on the learned labels, backward, clip, update.

The loss of a step is the sum of its tokens' cross-entropies over the number of learned tokens in the
whole step, so splitting a step into micro-batches (gradient accumulation, out-of-memory retries) does not
change it. Dropout is seeded from (seed, step): a resumed run draws what an uninterrupted one draws.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..engine.optim import build_optimizer, build_scheduler
from ..engine.schedule import Progress, schedule_length
from ..errors import TrainingStopped
from ..events import Events, LossesRead, RunStarted, StepEnded
from ..utils.device import Precision, is_out_of_memory
from ..utils.seeding import derive_seed
from .batches import IGNORE, ExampleSet, collate

OOM_ADVICE = ("lower batch_size or max_seq_length, turn on gradient_checkpointing, or train on a device with more "
              "memory (python -m lora_trainer plan --config ... shows what fits)")


def token_loss_sum(model: torch.nn.Module, batch: Dict[str, torch.Tensor], use_cache: bool = False) -> torch.Tensor:
    """Sum of the cross-entropies (fp32) of every learned token of a batch: the one loss of training,
    evaluation and the memory plan. Position t's logits predict the label at t + 1; IGNORE labels (prompt,
    padding) count nothing. `use_cache` only for the plan (models build their masks on `meta` only that way)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   use_cache=use_cache).logits
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


class TextTrainer:
    """Trains the LoRA weights of a peft causal LM on an ExampleSet; emits events; never prints."""

    def __init__(self, config, model: torch.nn.Module, examples: ExampleSet, pad_id: int, device: torch.device,
                 precision: Precision, events: Optional[Events] = None):
        self.config = config
        self.model = model
        self.examples = examples
        self.pad_id = pad_id
        self.device = device
        self.precision = precision
        self.events = events or Events()
        self.schedule = schedule_length(config, examples)
        self.progress = Progress()
        self.micro_batch_size = config.batch_size

    def setup(self) -> None:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optimizer, [{"params": params, "lr": cfg.learning_rate}],
                                         cfg.weight_decay, self.device)
        self.lr_scheduler = build_scheduler(cfg.lr_scheduler, self.optimizer, cfg.lr_warmup_steps,
                                            self.schedule["total_steps"])
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.use_grad_scaler else None

    def _autocast(self):
        dtype = self.precision.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def batch(self, indices: Sequence[int], examples: Optional[ExampleSet] = None) -> Dict[str, torch.Tensor]:
        source = examples or self.examples
        tensors = collate([source.examples[i] for i in indices], self.pad_id)
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}

    # ------------------------------------------------------------------ one step
    def step_batches(self, step: int) -> List[List[int]]:
        """Example indices of the batches of optimizer step `step` (0-based)."""
        cfg, spe = self.config, self.schedule["steps_per_epoch"]
        batches = self.examples.epoch_batches(step // spe, cfg.seed, cfg.batch_size)
        k, ga = step % spe, cfg.gradient_accumulation_steps
        return batches[k * ga:(k + 1) * ga]

    def optimizer_step(self, step: int, batches: Sequence[Sequence[int]]) -> float:
        """One optimizer step; on out-of-memory, retried with half the micro-batch (same examples, same loss)."""
        while True:
            try:
                return self._optimizer_step(step, batches)
            except Exception as exc:  # only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if self.micro_batch_size == 1:
                    raise TrainingStopped(f"out of memory at step {step + 1} even with micro-batch 1; {OOM_ADVICE}")
                self.micro_batch_size = max(1, self.micro_batch_size // 2)
                self.events.say(f"out of memory at step {step + 1}: retrying with micro-batch {self.micro_batch_size} "
                                f"(same effective batch)", logging.WARNING)

    def _optimizer_step(self, step: int, batches: Sequence[Sequence[int]]) -> float:
        torch.manual_seed(derive_seed(self.config.seed, "dropout", step))
        tokens = max(1, sum(self.examples.target_tokens(b) for b in batches))
        loss_sum = torch.zeros((), device=self.device)
        for batch in batches:
            for k in range(0, len(batch), self.micro_batch_size):
                with self._autocast():
                    loss = token_loss_sum(self.model, self.batch(batch[k:k + self.micro_batch_size])) / tokens
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                loss_sum += loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        finite = bool(torch.isfinite(loss_sum))
        if self.config.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
            finite = finite and (self.scaler is not None or bool(torch.isfinite(norm)))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._count_nonfinite(step, finite)
        return float(loss_sum)

    def _count_nonfinite(self, step: int, finite: bool) -> None:
        p = self.progress
        if finite:
            p.consecutive_nonfinite = 0
            return
        p.nonfinite_steps += 1
        p.consecutive_nonfinite += 1
        self.events.say(f"step {step + 1} had a non-finite loss or gradients and was skipped", logging.WARNING)
        if p.consecutive_nonfinite >= self.config.max_nonfinite_steps:
            raise TrainingStopped(f"{p.consecutive_nonfinite} steps in a row had a non-finite loss; training stopped "
                                  f"at step {step + 1}. Try a lower learning_rate, mixed_precision: bf16 or no, "
                                  f"max_grad_norm: 1.0")

    # ------------------------------------------------------------------ the loop
    def run(self, on_checkpoint: Optional[Callable[[int, int], Any]] = None) -> Progress:
        """Train until total_steps or a stop request; `on_checkpoint(step, epoch)` every save_steps."""
        cfg, p = self.config, self.progress
        total, spe = self.schedule["total_steps"], self.schedule["steps_per_epoch"]
        self.events.emit(RunStarted(total, spe, self.schedule["epochs"], len(self.examples), p.step,
                                    {"batches_per_epoch": self.schedule["batches_per_epoch"]}))
        self.model.train()
        started, first_step = time.perf_counter(), p.step
        try:
            while p.step < total:
                p.epoch = p.step // spe
                batches = self.step_batches(p.step)
                loss = self.optimizer_step(p.step, batches)
                p.step += 1
                p.samples_seen += sum(len(b) for b in batches)
                p.losses.append(loss)
                self.events.emit(LossesRead([(p.step, loss)]))
                elapsed = time.perf_counter() - started
                rate = (p.step - first_step) / elapsed if elapsed > 0 else 0.0
                self.events.emit(StepEnded(p.step, total, p.epoch + 1, loss, self.lr_scheduler.get_last_lr()[0],
                                           rate, (total - p.step) / rate if rate else 0.0, p.samples_seen))
                if self.events.stop_requested():
                    self.events.say(f"stop requested: stopping after step {p.step}")
                    break
                if on_checkpoint and cfg.save_steps and p.step % cfg.save_steps == 0 and p.step < total:
                    on_checkpoint(p.step, p.epoch)
        finally:
            self.model.eval()
        return p

    @torch.no_grad()
    def evaluation_loss(self, examples: ExampleSet, batch_size: Optional[int] = None) -> float:
        """Mean cross-entropy per learned token of `examples` with the current weights (eval mode: no dropout)."""
        was_training = self.model.training
        self.model.eval()
        total, tokens = 0.0, 0
        size = batch_size or self.micro_batch_size
        try:
            for start in range(0, len(examples), size):
                indices = list(range(start, min(start + size, len(examples))))
                with self._autocast():
                    total += float(token_loss_sum(self.model, self.batch(indices, examples)))
                tokens += examples.target_tokens(indices)
        finally:
            self.model.train(was_training)
        return total / max(1, tokens)
