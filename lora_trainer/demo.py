"""`python -m lora_trainer demo`: a tiny random model, generated images, one short CPU training run."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .config import config_from_dict
from .engine.run import TrainResult, train
from .events import Callback
from .tiny import build_tiny_sd1, make_shapes_dataset


def demo_config(folder: Path, steps: int = 200) -> dict:
    return {
        "train_data_dir": str(folder / "images"),
        "base_model": str(folder / "tiny-sd1"),
        "output_dir": str(folder / "output"),
        "output_name": "demo_shapes",
        "trigger_word": "shpz style",
        "resolution": 64,
        "min_bucket_reso": 64,
        "max_bucket_reso": 128,
        "lora_rank": 4,
        "lora_alpha": 4,
        "batch_size": 2,
        "max_steps": steps,
        "learning_rate": 1e-3,
        "save_steps": max(1, steps // 2),
        "seed": 0,
        "device": "cpu",
        # fp32: at this size bf16 saves nothing and its casts cost time (auto picks bf16 on AMX CPUs)
        "mixed_precision": "no",
        "overwrite": True,  # the demo's folder is its own: a second demo replaces the first
    }


def run_demo(folder: Path, steps: int = 200, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Build the tiny model and images under `folder` (reused when present) and train on them."""
    folder = Path(folder).resolve()
    if not (folder / "tiny-sd1" / "model_index.json").is_file():
        build_tiny_sd1(folder / "tiny-sd1")
    if not (folder / "images" / "metadata.csv").is_file():
        make_shapes_dataset(folder / "images")
    config = config_from_dict(demo_config(folder, steps))
    folder.mkdir(parents=True, exist_ok=True)
    import yaml

    (folder / "demo_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return train(config, callbacks)
