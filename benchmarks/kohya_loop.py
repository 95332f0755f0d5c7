"""The optional `kohya` loop of bench_train.py: kohya sd-scripts' train_network.py on the same model and data.

Nothing of sd-scripts is copied here: the user points `--kohya` at their own checkout (and `--kohya-python`
at the Python of an environment with its requirements). The same random full-size SD1.5 the other loops
train is written as a diffusers folder, the same generated images as a DreamBooth-style folder
(`1_shapes/` with .txt captions), and train_network.py runs with the options its docs recommend for speed
(`--cache_latents --sdpa --network_train_unet_only`, AdamW, rank 8, the trainer's precision). Step times
come from the wall-clock stamps of its TensorBoard loss scalars, so model loading and latent caching count
only towards the time to the first step, as for the other loops. Its memory is the peak resident memory
of its whole process (Linux VmHWM, read every 0.2 s), so it includes the interpreter, torch and the model.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from lora_trainer.utils.device import proc_kb_field

# kohya loads the SD1 tokenizer by hub id unless it finds it under --tokenizer_cache_dir with this name
KOHYA_SD1_TOKENIZER = "openai_clip-vit-large-patch14"


def write_diffusers_folder(bundle, folder: Path) -> Path:
    """The bundle's UNet, VAE, text encoder and tokenizer as a diffusers StableDiffusionPipeline folder, with a
    scheduler on the bundle's own noise schedule."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=bundle.num_train_timesteps, trained_betas=bundle.betas().numpy(),
                              prediction_type=bundle.prediction_type, clip_sample=False, steps_offset=1)
    bundle.pipeline(scheduler).save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_tokenizer_with_vocab_files(tokenizer, folder: Path) -> Path:
    """save_pretrained, plus vocab.json / merges.txt when it wrote only tokenizer.json (transformers 5): the
    older transformers of a kohya environment read a CLIP tokenizer from those two files."""
    tokenizer.save_pretrained(str(folder))
    if not (folder / "vocab.json").is_file():
        bpe = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]), encoding="utf-8")
        merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def write_dreambooth_folder(data: Path, folder: Path) -> Path:
    """The dataset (images + metadata.csv) as kohya's `<repeats>_<name>/` folder with .txt captions."""
    from lora_trainer.data.captions import read_metadata_csv

    images = folder / "1_shapes"
    images.mkdir(parents=True, exist_ok=True)
    for name, caption in read_metadata_csv(data / "metadata.csv").items():
        shutil.copy2(data / name, images / name)
        (images / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return folder


def step_times(logging_dir: Path, tag: str = "loss/current") -> Dict[int, float]:
    """Wall-clock time of each logged step of scalar `tag` (kohya logs `loss/current` once per optimizer step;
    bench_cpu_peers.py reads our trainer's `loss` and the diffusers example's `train_loss` the same way)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times: Dict[int, float] = {}
    for events in logging_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            times.update({e.step: e.wall_time for e in acc.Scalars(tag)})
    return times


def kohya_command(checkout: Path, python: str, model: Path, data: Path, out: Path, cfg, steps: int,
                  mixed_precision: str) -> List[str]:
    """train_network.py's command line for the benchmark's config (`cfg`: the trainer's TrainConfig)."""
    return [python, str(checkout / "train_network.py"),
            "--pretrained_model_name_or_path", str(model), "--tokenizer_cache_dir", str(model / "kohya_tokenizer"),
            "--train_data_dir", str(data), "--caption_extension", ".txt",
            "--output_dir", str(out / "output"), "--output_name", "kohya_bench", "--save_model_as", "safetensors",
            "--logging_dir", str(out / "logs"), "--log_with", "tensorboard",
            "--network_module", "networks.lora", "--network_dim", str(cfg.lora_rank),
            "--network_alpha", str(cfg.effective_alpha), "--network_train_unet_only",
            "--resolution", f"{cfg.resolution},{cfg.resolution}", "--train_batch_size", str(cfg.batch_size),
            "--max_train_steps", str(steps), "--learning_rate", str(cfg.learning_rate),
            "--optimizer_type", "AdamW", "--lr_scheduler", "constant", "--mixed_precision", mixed_precision,
            "--cache_latents", "--sdpa", "--seed", str(cfg.seed), "--max_data_loader_n_workers", "0"]


def run_with_peak_rss(command: List[str], cwd: Path, log: Path) -> "tuple[int, Optional[int]]":
    """Run `command` (output to `log`); its exit code and its peak resident memory in bytes (None where
    /proc does not tell)."""
    peak = None
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=str(cwd), stdout=out, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            peak = proc_kb_field(f"/proc/{proc.pid}/status", "VmHWM") or peak
            time.sleep(0.2)
    return proc.returncode, peak


def run_kohya(checkout: Path, python: str, bundle, data: Path, cfg, warmup: int, steps: int,
              precision_name: str) -> Dict[str, float]:
    """Run train_network.py for warmup + steps steps; steps/s over the last `steps`, and time to the first."""
    with tempfile.TemporaryDirectory(prefix="kohya_") as tmp:
        root = Path(tmp)
        model = write_diffusers_folder(bundle, root / "model")
        write_tokenizer_with_vocab_files(bundle.tokenizer, model / "kohya_tokenizer" / KOHYA_SD1_TOKENIZER)
        images = write_dreambooth_folder(data, root / "data")
        command = kohya_command(checkout, python, model, images, root, cfg, warmup + steps,
                                {"bf16": "bf16", "fp16": "fp16"}.get(precision_name, "no"))
        t0 = time.time()
        code, peak = run_with_peak_rss(command, checkout, root / "kohya.log")
        if code != 0:
            raise RuntimeError(f"kohya train_network.py failed (exit {code}):\n"
                               f"{(root / 'kohya.log').read_text()[-3000:]}")
        times = step_times(root / "logs")
    last, first = warmup + steps, warmup
    if last not in times or first not in times:
        raise RuntimeError(f"kohya logged steps {sorted(times)[:3]}...{sorted(times)[-3:]}, not {first} and {last}")
    return {"first_step_s": times[min(times)] - t0, "steps_per_s": steps / (times[last] - times[first]),
            "process_peak_gib": None if peak is None else round(peak / 2**30, 3)}

