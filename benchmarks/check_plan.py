"""Compare `plan`'s memory estimate with the measured peak of real training steps (not a test).

Full-size SD1.5 architecture with random weights. On CUDA the measure is torch.cuda.max_memory_allocated
growth; on CPU the growth of resident memory (sampled every 2 ms) from before the model is built.

    python benchmarks/check_plan.py --resolution 256 --batch 1 [--steps 2] [--checkpointing] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lora_trainer.config import parse_overrides
from lora_trainer.planner import GiB, estimate
from lora_trainer.tiny import make_shapes_dataset

from common import PeakMemory, full_size_sd15_bundle, shapes_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config keys on top (YAML values)")
    a = ap.parse_args()
    from lora_trainer.engine.run import train
    from lora_trainer.models.architecture import build_sd_architecture
    from lora_trainer.models.sd1 import SD1_ORIGINAL_CONFIG

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "data", n=max(4, a.batch), size=a.resolution)
        cfg = shapes_config(data, Path(tmp) / "out", a.resolution, a.batch, max_steps=a.steps,
                            gradient_checkpointing=a.checkpointing, device=device.type,
                            **parse_overrides(a.set))
        predicted = estimate(cfg, parts=build_sd_architecture(SD1_ORIGINAL_CONFIG, "meta"), device=device)
        t0 = time.time()
        with PeakMemory(device) as mem:
            bundle = full_size_sd15_bundle(device)
            train(cfg, bundle=bundle)
        measured = mem.growth
    row = {"device": device.type, "resolution": a.resolution, "batch": a.batch, "checkpointing": a.checkpointing,
           "predicted_gib": round(predicted.peak / GiB, 3), "measured_gib": round(measured / GiB, 3),
           "error_pct": round(100 * (predicted.peak - measured) / measured, 1), "seconds": round(time.time() - t0, 1)}
    print("\n".join(predicted.lines()))
    print(json.dumps(row))
    if a.json:
        Path(a.json).write_text(json.dumps(row))


if __name__ == "__main__":
    main()
