"""Device and mixed-precision choice from the hardware that is present."""
from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Optional

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; otherwise the requested device (error if it is absent)."""
    from ..errors import ConfigError

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config error: device: cuda was requested but no CUDA GPU is available (use device: auto)")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("config error: device: mps was requested but MPS is not available (use device: auto)")
    return torch.device(requested)


@dataclass(frozen=True)
class Precision:
    """How a run computes: autocast dtype (None = fp32), base-weight dtype, and whether a grad scaler is used."""

    name: str
    autocast_dtype: Optional[torch.dtype]
    base_dtype: torch.dtype
    use_grad_scaler: bool


def cpu_computes_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tile units (Xeon Sapphire Rapids and newer), where bf16 convolutions and
    matmuls run much faster than fp32 (benchmarks/README.md)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


def pick_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 on GPUs that support it, else fp16 + grad scaler on CUDA; on a CPU bf16 where it has AMX,
    else fp32; fp32 on MPS. bf16 keeps the frozen base weights in bf16 on a CPU too (LoRA weights stay fp32
    everywhere)."""
    from ..errors import ConfigError

    if device.type == "cpu":
        if requested == "fp16":
            raise ConfigError("config error: mixed_precision: fp16 is not supported on CPU (use auto or bf16)")
        if requested == "bf16" or (requested == "auto" and cpu_computes_bf16()):
            return Precision("bf16", torch.bfloat16, torch.bfloat16, False)
        return Precision("no", None, torch.float32, False)
    if device.type != "cuda":
        return Precision("no", None, torch.float32, False)
    if requested == "auto":
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16":
        return Precision("bf16", torch.bfloat16, torch.bfloat16, False)
    if requested == "fp16":
        return Precision("fp16", torch.float16, torch.float16, True)
    return Precision("no", None, torch.float32, False)


def precision_for_weights(weight_dtype: torch.dtype, device: torch.device, requested: str) -> Precision:
    """Precision when the base weights' dtype is fixed by their owner (the WebUI): compute in that dtype."""
    if weight_dtype == torch.float16:
        return Precision("fp16", torch.float16, torch.float16, device.type == "cuda")
    if weight_dtype == torch.bfloat16:
        return Precision("bf16", torch.bfloat16, torch.bfloat16, False)
    if device.type == "cpu" and requested == "auto":  # autocast over fp32 weights re-casts them every call
        return Precision("no", None, torch.float32, False)
    chosen = pick_precision(requested, device)
    return Precision(chosen.name, chosen.autocast_dtype, torch.float32, chosen.use_grad_scaler)


def available_ram() -> Optional[int]:
    """Memory a new allocation can get without swapping: Linux's MemAvailable (free + reclaimable cache),
    else the free pages, and no more than a container's memory limit leaves; None where nothing tells."""
    system = proc_kb_field("/proc/meminfo", "MemAvailable")
    if system is None:
        try:
            system = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            system = None
    container = _cgroup_headroom()
    known = [v for v in (system, container) if v is not None]
    return min(known) if known else None


def proc_kb_field(path: str, key: str) -> Optional[int]:
    """A `key:  N kB` line of a Linux /proc file (/proc/meminfo, /proc/PID/status) in bytes; None where the
    file or the line is missing."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> Optional[int]:
    """limit - usage of this process's memory cgroup (v2, else v1); None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:  # no limit set
            return None
        return max(0, int(limit) - usage)
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an accelerator (or CPU allocator) running out of memory."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or \
        (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
