"""Helpers shared by the benchmark scripts (not part of the package)."""
from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The shortest of `repeats` timed calls of `fn`, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def shapes_config(data: Path, out: Path, resolution: int, batch: int, **overrides):
    """The benchmarks' TrainConfig: generated shapes in `data` at one square bucket, rank 8; `overrides` on top."""
    from lora_trainer.config import config_from_dict

    return config_from_dict({"train_data_dir": str(data), "base_model": str(data), "output_dir": str(out),
                             "resolution": resolution, "min_bucket_reso": 64, "max_bucket_reso": resolution,
                             "batch_size": batch, "lora_rank": 8, **overrides})


class PeakMemory:
    """Peak memory while the block runs: CUDA max allocated, or resident memory sampled every 2 ms on CPU.
    `peak` is absolute (weights included), `growth` what the block added to what was in use at its start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = rss_bytes()
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()

    @property
    def growth(self) -> int:
        return self.peak - self.start

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30

    @property
    def growth_gib(self) -> float:
        return self.growth / 2**30


def full_size_sd15_bundle(device: torch.device, seed: int = 0):
    """A DiffusersBundle with the full SD1.5 architecture and random weights (CLIP-L sized vocabulary)."""
    from lora_trainer.models import default_families
    from lora_trainer.models.architecture import build_sd_architecture
    from lora_trainer.models.diffusers_bundle import DiffusersBundle
    from lora_trainer.models.loading import alphas_cumprod_from
    from lora_trainer.models.sd1 import SD1_ORIGINAL_CONFIG
    from lora_trainer.tiny import tiny_tokenizer

    parts = build_sd_architecture(SD1_ORIGINAL_CONFIG, device=None, seed=seed)
    tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp(prefix="tok_")))
    return DiffusersBundle(default_families().get("sd1"), parts["unet"], parts["vae"], parts["text_encoder"],
                           tokenizer, alphas_cumprod_from(0.00085, 0.012, 1000), "epsilon", name="random-sd15")


def sdxl_bundle(tiny: bool, seed: int = 0):
    """(SDXLBundle, its original config) with the full (or, for a quick CPU check of this script, a tiny) SDXL architecture."""
    from lora_trainer.models import default_families
    from lora_trainer.models.architecture import build_sd_architecture
    from lora_trainer.models.loading import alphas_cumprod_from
    from lora_trainer.models.sdxl import SDXL_ORIGINAL_CONFIG
    from lora_trainer.tiny import tiny_tokenizer

    original = copy.deepcopy(SDXL_ORIGINAL_CONFIG)
    if tiny:
        p = original["model"]["params"]
        p["network_config"]["params"].update(model_channels=32, num_head_channels=16, transformer_depth=[1, 1, 1],
                                             context_dim=64, adm_in_channels=32 + 6 * 256)
        p["first_stage_config"]["params"]["ddconfig"].update(ch=32)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
        for e in p["conditioner_config"]["params"]["emb_models"][:2]:
            e["params"]["text_config"] = text
    family = default_families().get("sdxl")
    parts = build_sd_architecture(original, device=None, seed=seed, family=family)
    tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp(prefix="tok_")))
    bundle = family.make_bundle({**parts, "tokenizer": tokenizer, "tokenizer_2": tokenizer,
                                 "alphas_cumprod": alphas_cumprod_from(0.00085, 0.012, 1000),
                                 "prediction_type": "epsilon"}, "random-sdxl", 1)
    return bundle, original
