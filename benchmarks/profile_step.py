"""Where a training step's GPU time goes: the top CUDA kernels of a few eager steps (not a test).

    python benchmarks/profile_step.py --resolution 512 --batch 8
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import full_size_sd15_bundle, shapes_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    from lora_trainer.engine.run import LoraRun
    from lora_trainer.tiny import make_shapes_dataset

    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "data", n=2 * a.batch, size=a.resolution)
        cfg = shapes_config(data, Path(tmp) / "out", a.resolution, a.batch, max_steps=100, seed=0, device=a.device,
                            cuda_graphs=False)
        run = LoraRun(cfg, bundle=full_size_sd15_bundle(device), tensorboard=False)
        trainer = run.setup()
        batch = trainer.dataset.epoch_batches(0, 0, a.batch)[:1]
        for step in range(2):  # warm-up (cuDNN/cuBLAS choices, allocator)
            trainer.optimizer_step(step, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for step in range(a.steps):
                trainer.optimizer_step(2 + step, batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
        run.close()
    events = prof.key_averages()
    gpu_total = sum(e.self_device_time_total for e in events) / a.steps / 1e3
    print(f"GPU kernel time per step: {gpu_total:.1f} ms (batch {a.batch}, {a.resolution} px)")
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=a.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
