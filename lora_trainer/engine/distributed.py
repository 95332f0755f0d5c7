"""Data-parallel training on torch.distributed, as started by `torchrun`: who this process is, its share of
each global batch, and the few collectives a run needs, each bounded by a timeout.

Every rank computes the same global batches (data order, flips, captions, noise, timesteps: utils/seeding)
and takes its own slice of each; the LoRA gradients and the loss are summed across ranks, so a step equals
one process's step at `batch_size * world_size`. Only rank 0 writes files. A process not started by a
launcher (the WebUI, a plain `python -m lora_trainer train`) gets `SINGLE`, whose collectives do nothing.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List, Sequence, TypeVar

import torch

from ..errors import ConfigError, LoraTrainerError, TrainingStopped

T = TypeVar("T")
STEP_TIMEOUT_ENV = "LORA_TRAINER_DIST_TIMEOUT"  # seconds a rank waits for the others during training
SETUP_TIMEOUT_ENV = "LORA_TRAINER_DIST_SETUP_TIMEOUT"  # ... while loading and caching (ranks differ in speed)
STEP_TIMEOUT_S = 45.0
SETUP_TIMEOUT_S = 900.0


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another launcher using its env:// variables) started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "MASTER_ADDR" in os.environ


class Distributed:
    """This process's place in a data-parallel run (rank 0 of 1 for a single process)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, step_group: Any = None,
                 local_world_size: int = 0):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.step_group = step_group
        self.local_world_size = local_world_size or world_size  # the ranks on this machine

    @property
    def several_machines(self) -> bool:
        return self.local_world_size < self.world_size

    @property
    def is_main(self) -> bool:
        """The rank that writes files and talks to the user."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank; other devices as they are."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, n: int) -> slice:
        """This rank's part of a global batch of `n` samples (contiguous; empty when n < world_size)."""
        per = -(-n // self.world_size)
        return slice(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    # ------------------------------------------------------------------ collectives
    def sum_gradients(self, params: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Sum the gradients of `params` and `loss` over the ranks (one flat all-reduce); returns the summed
        loss. A parameter without a gradient on this rank (an empty shard) counts as zeros."""
        if not self.active:
            return loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.reshape(1).float()])
        with self._collective("summing gradients"):
            torch.distributed.all_reduce(flat, group=self.step_group)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            summed = flat[offset:offset + n].view_as(g).to(g.dtype)
            if p.grad is None:
                p.grad = summed
            else:
                p.grad.copy_(summed)
            offset += n
        return flat[-1].to(loss.dtype)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a stop request seen by one rank stops all)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        with self._collective("agreeing on a stop request"):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.step_group)
        return bool(t.item())

    def from_main(self, load: Callable[[], T]) -> T:
        """Run `load` on rank 0 and hand every rank its result (or its error): a state file only rank 0's
        machine may have."""
        if not self.active:
            return load()
        box: List[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", load())
            except LoraTrainerError as exc:
                box[0] = ("error", exc)
        with self._collective("reading the training state on rank 0"):
            torch.distributed.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def share_tensors(self, mine: Dict[Any, Any], device: torch.device) -> Dict[Any, Any]:
        """Every rank's entries on every rank (each rank computed a disjoint part of a cache); the values are
        tensors or dicts of tensors."""
        if not self.active:
            return mine
        parts: List[Any] = [None] * self.world_size
        with self._collective("sharing the cached latents and captions"):
            torch.distributed.all_gather_object(parts, _moved(mine, torch.device("cpu")))
        return {k: v for part in parts for k, v in _moved(part, device).items()}

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Turn a failed or timed-out collective (a rank died or hangs) into one clear message."""
        try:
            yield
        except (RuntimeError, ValueError) as exc:  # torch.distributed's errors derive from RuntimeError
            text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())  # gloo puts its source file first
            first = text.splitlines()[0].split(". ")[0][:160] if text else type(exc).__name__
            raise TrainingStopped(
                f"rank {self.rank} of {self.world_size} lost the other ranks while {what} ({first}); another "
                f"rank stopped, died or hangs. Files saved so far are intact.") from None

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


SINGLE = Distributed()


def _moved(values: Dict[Any, Any], device: torch.device) -> Dict[Any, Any]:
    """A dict of tensors (or of dicts of tensors) on `device`."""
    return {k: _moved(v, device) if isinstance(v, dict) else v.to(device) for k, v in values.items()}


def _seconds(env: str, default: float) -> float:
    try:
        return float(os.environ.get(env, default))
    except ValueError:
        return default


def start(device: torch.device) -> Distributed:
    """Join the launcher's process group (env:// rendezvous): gloo for CPU tensors, NCCL for CUDA ones.

    Loading and caching may take the ranks different times, so the default group waits long; the group used
    during training steps gives up after STEP_TIMEOUT_S (a dead or stuck rank stops the others quickly).
    """
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world == 1:
        return Distributed(rank, world, local_rank)
    backend = "gloo"
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"config error: torchrun started more processes on this machine than it has GPUs "
                              f"({torch.cuda.device_count()}): use --nproc_per_node {torch.cuda.device_count()} "
                              f"(or device: cpu)")
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=_seconds(SETUP_TIMEOUT_ENV, SETUP_TIMEOUT_S)))
    step_group = dist.new_group(backend=backend, timeout=timedelta(seconds=_seconds(STEP_TIMEOUT_ENV,
                                                                                    STEP_TIMEOUT_S)))
    return Distributed(rank, world, local_rank, step_group, local_world)


@contextmanager
def session(requested_device: str) -> Iterator[Distributed]:
    """The data-parallel context of a CLI run: `SINGLE` unless a launcher started this process."""
    if not launched_by_torchrun():
        yield SINGLE
        return
    from ..utils.device import pick_device

    d = start(pick_device(requested_device))
    yield d
    d.close()  # only after a clean end: tearing down after a lost rank can block
