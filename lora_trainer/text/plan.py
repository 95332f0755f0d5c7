"""Peak memory of a text run, and the largest batch that fits, before any weight is read.

As for images (lora_trainer/planner.py, whose activation counter this reuses): the model is built from its
config.json on the `meta` device, LoRA layers are added as in training, and one training forward at the
config's batch and sequence length records every tensor autograd saves (attention counted as
memory-efficient SDPA keeps it). Peak = base weights + LoRA state (weight, grad, two AdamW moments) +
saved activations + the first backward op's transient. Some models cannot run on `meta` (transformers
4.30's Llama builds its causal mask from a Python scalar): then activations are reported as unknown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..planner import GiB, LORA_STATE_BYTES_PER_PARAM, device_capacity, saved_activation_bytes
from ..utils.device import pick_device, pick_precision
from .batches import IGNORE
from .config import TextTrainConfig
from .model import add_lora, check_model_folder, lora_targets, read_model_config, resolve_max_seq_length
from .trainer import token_loss_sum


@dataclass
class TextMemoryPlan:
    device: str
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    weights: int
    lora_state: int
    activations: Optional[int]  # None: this model cannot be traced on `meta`
    transient: int = 0
    capacity: Optional[int] = None
    max_batch: Optional[int] = None
    advice: List[str] = field(default_factory=list)
    note: str = ""

    @property
    def peak(self) -> int:
        return self.weights + self.lora_state + (self.activations or 0) + self.transient

    @property
    def fits(self) -> Optional[bool]:
        if self.capacity is None or self.activations is None:
            return None
        return self.peak <= self.capacity

    def lines(self) -> List[str]:
        acts = _size(self.activations) if self.activations is not None else "   unknown"
        out = [f"device {self.device}; batch {self.batch_size} x {self.seq_len} tokens; gradient checkpointing "
               f"{'on' if self.gradient_checkpointing else 'off'}",
               f"  base weights       {_size(self.weights)}",
               f"  LoRA train state   {_size(self.lora_state)}",
               f"  activations        {acts}",
               f"  backward transient {_size(self.transient)}",
               f"  estimated peak     {_size(self.peak)}" + ("" if self.activations is not None else " + activations")]
        if self.capacity is not None:
            verdict = {True: "fits", False: "does NOT fit", None: "unknown"}[self.fits]
            out.append(f"  available          {_size(self.capacity)} -> {verdict}")
        if self.max_batch is not None:
            out.append(f"largest batch_size that fits: {self.max_batch}")
        if self.note:
            out.append(f"note: {self.note}")
        return out + [f"advice: {a}" for a in self.advice]


def _size(n: int) -> str:
    return f"{n / GiB:7.2f} GiB" if n >= GiB else f"{n / 2**20:7.1f} MiB"


def meta_model(config: TextTrainConfig):
    """(the base model with LoRA layers on `meta`, the sequence length): no weights are read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = check_model_folder(config.base_model)
    seq_len = resolve_max_seq_length(config.max_seq_length, read_model_config(folder), folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    model.requires_grad_(False)
    targets, fan_in_fan_out = lora_targets(model, config.target_modules)
    model = add_lora(model, targets, fan_in_fan_out, config.lora_rank, config.effective_alpha, config.lora_dropout,
                     config.seed)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model, seq_len


def estimate_text(config: TextTrainConfig, model, seq_len: int, batch: int, device: torch.device) -> TextMemoryPlan:
    """The plan at one batch size (`model` from `meta_model`)."""
    precision = pick_precision(config.mixed_precision, device)
    dtype = precision.autocast_dtype or torch.float32
    lora = [p for p in model.parameters() if p.requires_grad]
    base = [p for p in model.parameters() if not p.requires_grad]
    for p in model.parameters():  # as under autocast: activations in the compute dtype
        p.data = p.data.to(dtype)
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    tensors = {"input_ids": ids, "labels": torch.full_like(ids, IGNORE)}  # no padding mask: see token_loss_sum
    activations, largest, note = None, 0, ""
    model.train()
    try:
        saved = saved_activation_bytes(lambda: token_loss_sum(model, tensors, use_cache=True), (model,))
        activations, largest = saved["total"], saved["largest"]
    except Exception as exc:  # noqa: BLE001 - some models cannot run on meta; the rest of the plan still holds
        note = (f"activations not estimated: {type(model.base_model.model).__name__} cannot run on the meta device "
                f"here ({type(exc).__name__}); a short run shows the real peak")
    finally:
        model.eval()
    return TextMemoryPlan(str(device), batch, seq_len, config.gradient_checkpointing,
                          weights=sum(p.numel() for p in base) * precision.base_dtype.itemsize,
                          lora_state=sum(p.numel() for p in lora) * LORA_STATE_BYTES_PER_PARAM,
                          activations=activations, transient=2 * largest, note=note)


def plan_text(config: TextTrainConfig, max_batch_search: int = 64) -> TextMemoryPlan:
    """The plan at the config's batch size, the largest batch that fits, and what to change if it does not."""
    device = pick_device(config.device)
    model, seq_len = meta_model(config)
    result = estimate_text(config, model, seq_len, config.batch_size, device)
    result.capacity = device_capacity(device)
    if result.capacity is None or result.activations is None:
        return result
    best, batch = 0, 1
    while batch <= max_batch_search:
        if estimate_text(config, model, seq_len, batch, device).peak > result.capacity:
            break
        best, batch = batch, batch * 2
    result.max_batch = best or None
    if not best:
        result.advice.append("nothing fits: turn on gradient_checkpointing, lower max_seq_length, or use "
                             "mixed_precision bf16/fp16 on a GPU")
    elif best < config.batch_size:
        result.advice.append(f"lower batch_size to {best} and raise gradient_accumulation_steps to keep the effective "
                             f"batch, or turn on gradient_checkpointing")
    return result
