"""Training speed and memory: this trainer vs. a reference loop like the diffusers LoRA example (not a test).

For each workload it runs, on the same random-weight model and data:
- `trainer`: the real trainer (LoraRun) with its defaults: cached latents and text embeddings, SDPA,
  fused/foreach AdamW, fp32 LoRA on bf16/fp16 base weights (GPU, AMX CPU), losses read back every few
  steps, on CUDA the step's forward/backward replayed as CUDA graphs (`cuda_graphs: auto`), on a CPU the
  frozen convolutions on weights packed once for oneDNN (`pack_conv_weights: auto`), on CUDA GroupNorm and
  LayerNorm in bf16 instead of autocast's fp32 (`half_precision_norms: auto`);
- `trainer-eager`: the same with `cuda_graphs: false` (every kernel launched from Python);
- `trainer-fp32-norms`: the same with `half_precision_norms: false` (autocast's fp32 norms, as before);
- `trainer-channels-last`, `trainer-compile`: the trainer with `channels_last: true` / `torch_compile: true`
  (`channels_last: auto`, the default, is on whenever CUDA graphs are); `trainer-compile-graphs`: compiled
  and replayed as CUDA graphs (`cuda_graphs: true`; on a GPU, after minutes of compiling);
- `reference`: what examples/text_to_image/train_text_to_image_lora.py does per step: VAE encode and
  text-encoder forward every step, LoRA on the same modules, AdamW, loss.item() every step; its precision
  is the trainer's (`mixed_precision: auto`: bf16 on a GPU or an AMX CPU; VAE, text encoder and UNet cast
  to it, as the example does with `--mixed_precision`);
- `reference-fp32`: the same loop at the example's default, `--mixed_precision no` (fp32 throughout);
- `kohya` (only with `--kohya PATH`, SD1.5 workloads): kohya sd-scripts' train_network.py from that
  checkout on the same model and images (see kohya_loop.py); its memory is its process's peak resident
  memory (model, torch and interpreter included: compare with check_plan.py's figure plus ~0.5 GiB).
With `--network-type lora locon loha lokr locon-dora ...` the trainer loops run once per adapter kind (the
`-dora` names set `use_dora`; LyCORIS kinds with conv_dim = rank) and the table adds each kind's speed and
memory relative to plain LoRA; the reference loops stay plain LoRA.
It prints a table and writes JSON: steps/s, images/s, time to first step, peak memory (CUDA max
allocated on GPU, peak resident growth on CPU), and on a GPU the share of its dense bf16 peak
(datasheet figure; 1.73 TFLOP per 512 px image-step).

    python benchmarks/bench_train.py --workloads tiny sd15-256-b1          # CPU-sized
    python benchmarks/bench_train.py --workloads sd15-512-b1 sd15-512-b8 --json out.json   # GPU
    python benchmarks/bench_train.py --workloads sd15-512-b8 --loops trainer trainer-eager trainer-compile
    python benchmarks/bench_train.py --workloads sd15-256-b1 --loops reference trainer reference trainer  # medians
    python benchmarks/bench_train.py --workloads tiny --loops trainer --network-type lora locon loha lokr locon-dora
    python benchmarks/bench_train.py --workloads sd15-256-b1 --kohya ~/sd-scripts --kohya-python ~/sd-scripts/venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional, Sequence

import torch

from common import PeakMemory, full_size_sd15_bundle, sdxl_bundle, shapes_config
from kohya_loop import run_kohya

WORKLOADS: Dict[str, Dict] = {
    "tiny": dict(model="tiny", resolution=64, batch=2),
    "sd15-256-b1": dict(model="sd15", resolution=256, batch=1),
    "sd15-256-b4": dict(model="sd15", resolution=256, batch=4),
    "sd15-512-b1": dict(model="sd15", resolution=512, batch=1),
    "sd15-512-b1-ckpt": dict(model="sd15", resolution=512, batch=1, checkpointing=True),
    "sd15-512-b4": dict(model="sd15", resolution=512, batch=4),
    "sd15-512-b8": dict(model="sd15", resolution=512, batch=8),
    # SDXL with its defaults (gradient checkpointing on); sdxl-tiny-128-b1 checks the path on a CPU
    "sdxl-1024-b1": dict(model="sdxl", resolution=1024, batch=1, checkpointing=True),
    "sdxl-tiny-128-b1": dict(model="sdxl-tiny", resolution=128, batch=1, checkpointing=True),
}


# Dense (no sparsity) bf16 tensor-core peak from the vendors' datasheets, TFLOP/s.
DENSE_BF16_PEAK_TFLOPS = {"H200 NVL": 835.0, "H200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4,
                          "A100": 312.0, "L40S": 362.1, "L4": 121.0, "RTX 4090": 165.2, "RTX 3090": 71.0}


def dense_bf16_peak(device_name: str) -> Optional[float]:
    """The datasheet peak of the first GPU name in the table that the device's name contains."""
    for name, peak in DENSE_BF16_PEAK_TFLOPS.items():
        if name in device_name:
            return peak
    return None


# The trainer's variants: config keys on top of the workload's.
TRAINER_LOOPS: Dict[str, Dict] = {"trainer": {}, "trainer-eager": {"cuda_graphs": False},
                                  "trainer-channels-last": {"channels_last": True},
                                  "trainer-fp32-norms": {"half_precision_norms": False},
                                  "trainer-compile": {"torch_compile": True},
                                  "trainer-compile-graphs": {"torch_compile": True, "cuda_graphs": True},
                                  "trainer-bf16": {"mixed_precision": "bf16"},
                                  "trainer-fp32": {"mixed_precision": "no"}}
# The reference loop's variants.
REFERENCE_LOOPS: Dict[str, Dict] = {"reference": {}, "reference-fp32": {"mixed_precision": "no"}}


@dataclass
class Row:
    workload: str
    loop: str
    steps_per_s: float
    images_per_s: float
    first_step_s: float
    peak_gib: Optional[float]
    tflops: Optional[float] = None
    peak_share: Optional[float] = None  # tflops / the GPU's dense bf16 peak
    process_peak_gib: Optional[float] = None  # kohya: its whole process's peak resident memory


def make_bundle(model: str, device: torch.device, root: Path):
    if model == "tiny":
        from lora_trainer.engine.run import load_model
        from lora_trainer.config import config_from_dict
        from lora_trainer.tiny import build_tiny_sd1

        path = build_tiny_sd1(root / "tiny")
        return load_model(config_from_dict({"train_data_dir": ".", "base_model": str(path), "output_dir": "."}))
    if model.startswith("sdxl"):
        return sdxl_bundle(tiny=model == "sdxl-tiny")[0]
    return full_size_sd15_bundle(device)


def run_trainer(bundle, cfg, warmup: int, steps: int) -> Dict[str, float]:
    from lora_trainer.engine.run import LoraRun
    from lora_trainer.events import Callback, StepEnded

    stamps: Dict[int, float] = {}

    class Clock(Callback):
        def on_event(self, event):
            if isinstance(event, StepEnded):
                stamps[event.step] = time.perf_counter()

    t0 = time.perf_counter()
    run = LoraRun(cfg, [Clock()], bundle=bundle, tensorboard=False)
    try:
        run.setup()
        run.train()
    finally:
        run.close()
    # losses are read back (a device sync) every log_every_n_steps: time between two such steps
    return {"first_step_s": stamps[1] - t0, "steps_per_s": steps / (stamps[warmup + steps] - stamps[warmup])}


def run_reference(bundle, dataset, cfg, warmup: int, steps: int, device: torch.device) -> Dict[str, float]:
    """The diffusers example's inner loop on the same modules (no caching; loss.item() every step). The text
    encoder(s) and the UNet are called through the bundle, which adds SDXL's pooled/size conditioning."""
    from lora_trainer.data.dataset import stack_pixels
    from lora_trainer.engine.diffusion import add_noise
    from lora_trainer.adapters import make_spec
    from lora_trainer.network.network import AdapterNetwork
    from lora_trainer.utils.device import pick_precision

    t0 = time.perf_counter()
    precision = pick_precision(cfg.mixed_precision, device)
    bundle.prepare(device, precision.base_dtype, cfg.gradient_checkpointing_for(bundle.family), False)
    bundle.vae.to(device, precision.base_dtype)
    net = AdapterNetwork.inject(bundle.network_components(False), make_spec(cfg.lora_rank, cfg.effective_alpha))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate)
    ac = bundle.alphas_cumprod
    batches = dataset.epoch_batches(0, cfg.seed, cfg.batch_size)
    autocast = torch.autocast(device.type, dtype=precision.autocast_dtype, enabled=precision.autocast_dtype is not None)
    stamps = []
    try:
        for i in range(warmup + steps):
            samples = batches[i % len(batches)]
            pixels = stack_pixels(dataset, samples).to(device)
            with torch.no_grad():
                latents = bundle.vae.encode(pixels.to(bundle.vae.dtype)).latent_dist.sample() * bundle.vae_scale
                with autocast:
                    cond = bundle.encode_captions([s.caption for s in samples])
            noise = torch.randn_like(latents)
            t = torch.randint(0, len(ac), (latents.shape[0],), device=device)
            noisy = add_noise(latents.float(), noise.float(), t, ac).to(latents.dtype)
            with autocast:
                pred = bundle.predict(noisy, t, cond, [dataset.image_info(s.index) for s in samples])
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            loss.item()
            stamps.append(time.perf_counter())
    finally:
        net.remove()
        bundle.vae.to(torch.float32)
    return {"first_step_s": stamps[0] - t0, "steps_per_s": steps / (stamps[-1] - stamps[warmup - 1])}


NETWORK_TYPES = ("lora", "locon", "loha", "lokr", "locon-dora", "loha-dora", "lokr-dora")


def network_overrides(network_type: str) -> Dict:
    """Config keys of a `--network-type` name (`loha-dora`: network_type loha with use_dora)."""
    kind, _, dora = network_type.partition("-")
    return {"network_type": kind, "network_args": {"use_dora": True} if dora else {}}


def measure(name: str, spec: Dict, device: torch.device, root: Path, warmup: int, steps: int,
            loops: List[str], bundles: Dict, peak: Optional[float] = None, kohya: Optional[Dict] = None,
            network_types: Sequence[str] = ("lora",)) -> List[Row]:
    from lora_trainer.engine.run import build_training_set
    from lora_trainer.tiny import make_shapes_dataset
    from lora_trainer.utils.device import pick_precision

    res, batch = spec["resolution"], spec["batch"]
    data = make_shapes_dataset(root / f"data_{res}", n=max(8, 2 * batch), size=res)
    common = dict(max_steps=warmup + steps, learning_rate=1e-4, seed=0, device=device.type,
                  log_every_n_steps=warmup, gradient_checkpointing=spec.get("checkpointing", False))
    rows = []
    runs = [(loop, nt) for loop in loops for nt in (network_types if loop in TRAINER_LOOPS else ("lora",))]
    for loop, network_type in runs:
        if loop == "kohya" and (kohya is None or spec["model"] != "sd15"):
            print(f"{name}: kohya skipped ({'SD1.5 workloads only' if kohya else 'no --kohya checkout given'})")
            continue
        overrides = {**TRAINER_LOOPS.get(loop, REFERENCE_LOOPS.get(loop, {})), **network_overrides(network_type)}
        cfg = shapes_config(data, root / f"out_{name}", res, batch, **common, **overrides)
        if spec["model"] not in bundles:  # built once, reused (runs restore it; weights stay on the device)
            bundles[spec["model"]] = make_bundle(spec["model"], device, root)
        bundle = bundles[spec["model"]]
        with PeakMemory(device) as mem:
            if loop in TRAINER_LOOPS:
                r = run_trainer(bundle, cfg, warmup, steps)
            elif loop == "kohya":
                precision = pick_precision(cfg.mixed_precision, device).name
                r = run_kohya(kohya["checkout"], kohya["python"], bundle, data, cfg, warmup, steps, precision)
            else:
                r = run_reference(bundle, build_training_set(cfg), cfg, warmup, steps, device)
        tflops = 1.73 * batch * (res / 512) ** 2 * r["steps_per_s"] if spec["model"] == "sd15" else None
        share = round(tflops / peak, 3) if tflops and peak else None
        label = loop if network_type == "lora" else f"{loop}[{network_type}]"
        rows.append(Row(name, label, round(r["steps_per_s"], 3), round(r["steps_per_s"] * batch, 3),
                        round(r["first_step_s"], 1), None if loop == "kohya" else round(mem.peak_gib if device.type == "cuda" else mem.growth_gib, 3), round(tflops, 1) if tflops else None, share,
                        r.get("process_peak_gib")))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", nargs="+", default=["tiny", "sd15-256-b1"], choices=sorted(WORKLOADS))
    ap.add_argument("--loops", nargs="+", default=["trainer", "reference"],
                    choices=[*TRAINER_LOOPS, *REFERENCE_LOOPS, "kohya"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--network-type", nargs="+", default=["lora"], choices=NETWORK_TYPES,
                    help="adapter kinds the trainer loops run with (each beside plain LoRA when that is listed)")
    ap.add_argument("--kohya", type=Path, default=None, help="a kohya sd-scripts checkout: adds the `kohya` loop")
    ap.add_argument("--kohya-python", default=sys.executable, help="Python of an environment with its requirements")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gpu_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = dense_bf16_peak(gpu_name) if device.type == "cuda" else None
    rows: List[Row] = []
    bundles: Dict = {}
    loops = a.loops + (["kohya"] if a.kohya and "kohya" not in a.loops else [])
    kohya = {"checkout": a.kohya.resolve(), "python": a.kohya_python} if a.kohya else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.workloads:
            new = measure(name, WORKLOADS[name], device, Path(tmp), a.warmup, a.steps, loops, bundles, peak, kohya,
                          a.network_type)
            print(json.dumps([asdict(r) for r in new]), flush=True)
            rows += new
    header = (f"{'workload':18} {'loop':21} {'steps/s':>8} {'img/s':>8} {'1st step s':>10} {'peak GiB':>9} "
              f"{'TFLOP/s':>8} {'of peak':>8}")
    print(f"device: {gpu_name}" + (f" (dense bf16 peak {peak} TFLOP/s)" if peak else ""))
    print(header)
    for r in rows:
        share = f"{r.peak_share:.1%}" if r.peak_share is not None else "-"
        peak_gib = f"{r.peak_gib:9.3f}" if r.peak_gib is not None else f"{'-':>9}"
        print(f"{r.workload:18} {r.loop:21} {r.steps_per_s:8.3f} {r.images_per_s:8.3f} {r.first_step_s:10.1f} "
              f"{peak_gib} {r.tflops if r.tflops is not None else '-':>8} {share:>8}")
    for r in rows:
        if r.process_peak_gib is not None:
            print(f"{r.workload}: {r.loop} process peak resident memory {r.process_peak_gib:.2f} GiB (whole process)")
    # a loop named more than once (`--loops reference trainer reference trainer`) counts with its median
    runs: Dict[tuple, List[float]] = {}
    for r in rows:
        runs.setdefault((r.workload, r.loop), []).append(r.steps_per_s)
    for workload in a.workloads:
        for loop in TRAINER_LOOPS:
            for ref in [*REFERENCE_LOOPS, "kohya"]:
                if (workload, loop) in runs and (workload, ref) in runs:
                    mine, theirs = runs[(workload, loop)], runs[(workload, ref)]
                    of = f" (medians of {len(mine)} / {len(theirs)} runs)" if len(mine) + len(theirs) > 2 else ""
                    print(f"{workload}: {loop} / {ref} steps/s = {median(mine) / median(theirs):.2f}x{of}")
    by_label = {(r.workload, r.loop): r for r in rows}
    for r in rows:
        loop, _, kind = r.loop.partition("[")
        plain = by_label.get((r.workload, loop))
        if kind and plain is not None:
            mem = (f", peak memory {r.peak_gib:.3f} vs {plain.peak_gib:.3f} GiB"
                   if r.peak_gib is not None and plain.peak_gib is not None else "")
            print(f"{r.workload}: {r.loop} / {loop} (plain LoRA) steps/s = {r.steps_per_s / plain.steps_per_s:.2f}x{mem}")
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
