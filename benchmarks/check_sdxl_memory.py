"""Peak GPU memory of SDXL LoRA training with the default settings (not a test; needs CUDA for real numbers).

Full-size SDXL base architecture with random weights, trained a few steps through the normal engine. Reports,
per setting, torch.cuda.max_memory_allocated during setup (latent and text caching) and during the steps,
next to `plan`'s estimate, and the time per step. The defaults (gradient_checkpointing auto = on for SDXL,
cached latents and text-encoder outputs, bf16 base weights, fp32 VAE) should fit a 12 GB GPU at 1024 px.

    python benchmarks/check_sdxl_memory.py [--resolution 1024] [--steps 5] [--json out.json] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from common import sdxl_bundle, shapes_config
from lora_trainer.planner import GiB, estimate
from lora_trainer.tiny import make_shapes_dataset

SETTINGS = [  # (label, config overrides)
    ("defaults (UNet LoRA r16)", {}),
    ("+ both text encoders", {"train_text_encoder": True}),
    ("no gradient checkpointing", {"gradient_checkpointing": False}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny architecture (checks the script on a CPU)")
    a = ap.parse_args()
    from lora_trainer.engine.run import LoraRun
    from lora_trainer.models.architecture import build_sd_architecture

    cuda = torch.cuda.is_available()
    t0 = time.time()
    bundle, original = sdxl_bundle(a.tiny)
    print(f"built random SDXL in {time.time() - t0:.0f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "data", n=4, size=a.resolution)
        for label, overrides in SETTINGS:
            cfg = shapes_config(data, Path(tmp) / "out", a.resolution, 1, **{
                "max_steps": a.steps, "lora_rank": a.rank, "learning_rate": 1e-4, "log_every_n_steps": a.steps,
                "device": "cuda" if cuda else "cpu", "mixed_precision": "auto" if cuda else "no", **overrides})
            parts = {**build_sd_architecture(original, "meta", family=bundle.family),
                     "family": bundle.family}
            predicted = estimate(cfg, parts=parts, device=torch.device("cuda" if cuda else "cpu"))
            if not cfg.gradient_checkpointing_for(bundle.family):
                bundle.unet.disable_gradient_checkpointing()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            run = LoraRun(cfg, bundle=bundle, tensorboard=False)
            run.setup()
            setup_peak = torch.cuda.max_memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.time()
            run.train()
            if cuda:
                torch.cuda.synchronize()
            seconds = (time.time() - start) / a.steps
            train_peak = torch.cuda.max_memory_allocated() if cuda else 0
            losses = run.trainer.progress.losses
            run.close()
            rows.append({"setting": label, "resolution": a.resolution, "rank": a.rank,
                         "setup_peak_gib": round(setup_peak / GiB, 2), "train_peak_gib": round(train_peak / GiB, 2),
                         "planned_gib": round(predicted.peak / GiB, 2), "s_per_step": round(seconds, 3),
                         "finite_losses": all(v == v for v in losses)})
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
