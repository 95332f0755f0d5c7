"""Benchmark: training steps/s on the tiny model with and without latent / text-encoder caching.

Not a test. Run: python benchmarks/bench_caching.py [--steps 60]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lora_trainer.config import config_from_dict
from lora_trainer.engine.run import LoraRun
from lora_trainer.tiny import build_tiny_sd1, make_shapes_dataset


def measure(root: Path, steps: int, cache: bool) -> dict:
    cfg = config_from_dict(dict(
        train_data_dir=str(root / "data"), base_model=str(root / "model"), output_dir=str(root / f"out_{cache}"),
        resolution=64, min_bucket_reso=64, max_bucket_reso=128, lora_rank=4, batch_size=2, max_steps=steps,
        learning_rate=1e-3, seed=0, device="cpu", cache_latents=cache, cache_text_encoder_outputs=cache))
    run = LoraRun(cfg, tensorboard=False)
    t0 = time.perf_counter()
    run.setup()
    t1 = time.perf_counter()
    run.train()
    t2 = time.perf_counter()
    run.close()
    return {"cache": cache, "setup_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2),
            "steps_per_s": round(steps / (t2 - t1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_sd1(root / "model")
        make_shapes_dataset(root / "data", n=8)
        measure(root, 5, True)  # warm-up
        rows = [measure(root, args.steps, False), measure(root, args.steps, True)]
    print(f"{'caching':>8} {'setup s':>8} {'train s':>8} {'steps/s':>8}")
    for r in rows:
        print(f"{'on' if r['cache'] else 'off':>8} {r['setup_s']:>8} {r['train_s']:>8} {r['steps_per_s']:>8}")
    print(f"speed-up from caching: {rows[1]['steps_per_s'] / rows[0]['steps_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
