"""How close one cached CPU training step comes to what this machine can compute (not a test).

Counts the floating-point work of a cached step of the full-size SD1.5 UNet with a rank-8 LoRA (matrix
products, convolutions and attention, forward and backward), times the step, and sets both against the
machine's own fp32 matrix-multiply rate (a 4096^3 `torch.mm`). It also prices the step as if every
matrix product in it ran as fast as the same product does alone with its operands already in cache
(an optimistic floor for MKL/oneDNN at these shapes), and one VAE encode (what a step of the first epoch
adds when caching overlaps training). With `--peer-step` it prints what a speed-up over that peer needs.

    PYTHONPATH=. python benchmarks/bench_step_efficiency.py [--resolution 256] [--peer-step 3.23 --ratio 1.5]
(set ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 to time an AVX2-only CPU on a newer one).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

from common import best_of, full_size_sd15_bundle, shapes_config

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
CONV_OPS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_transpose_pointwise",
            "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution")
SDPA_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def sgemm_peak() -> float:
    """FLOP/s of a 4096^3 fp32 matrix product: the most this machine's BLAS computes."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    return 2 * 4096**3 / best_of(lambda: a @ b, 5)


def _flop_formulas() -> Dict:
    """Formulas for the CPU kernels the stock counter does not know (oneDNN convolutions, CPU flash attention)."""
    ops = torch.ops

    def conv(x, w, *args, out_shape=None, **kwargs):
        return conv_flop_count(x, w, out_shape, transposed=False)

    def conv_transposed(x, w, *args, out_shape=None, **kwargs):
        return conv_flop_count(x, w, out_shape, transposed=True)

    def attention(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def attention_backward(grad, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad, q, k, v)

    return {ops.mkldnn._convolution_pointwise: conv,
            ops.mkldnn._convolution_transpose_pointwise: conv_transposed,
            ops.aten._scaled_dot_product_flash_attention_for_cpu: attention,
            ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward}


def step_flops(step: Callable[[], object]) -> Dict[str, float]:
    """FLOPs of one call of `step`, by operator."""
    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as counter:
        step()
    return {str(op): float(n) for op, n in counter.get_flop_counts()["Global"].items()}


def gemm_flops(name: str, shapes: List[List[int]]) -> int:
    if name == "aten::addmm":
        shapes = shapes[1:]
    a, b = shapes[0], shapes[1]
    return 2 * a[-2] * a[-1] * b[-1] * (a[0] if name == "aten::bmm" else 1)


def best_gemm_seconds(name: str, shapes: List[List[int]]) -> float:
    """The product alone, operands in cache: the faster of a contiguous and a transposed right operand."""
    if name == "aten::addmm":
        shapes = shapes[1:]
    a = torch.randn(shapes[0])
    b = torch.randn(shapes[1])
    bt = torch.randn(list(shapes[1][:-2]) + [shapes[1][-1], shapes[1][-2]]).transpose(-1, -2)
    product = torch.bmm if name == "aten::bmm" else torch.mm
    return min(best_of(lambda: product(a, b), 5), best_of(lambda: product(a, bt), 5))


def profile_step(step: Callable[[], object]) -> Tuple[Dict[str, float], List[Tuple[str, List[List[int]], int, float]]]:
    """Seconds of self time by kind, and (op, shapes, calls, seconds) of every matrix product."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    kinds: Dict[str, float] = defaultdict(float)
    gemms = []
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6
        kind = ("matrix products" if event.key in GEMM_OPS else "convolutions" if event.key in CONV_OPS
                else "attention" if event.key in SDPA_OPS else "everything else")
        kinds[kind] += seconds
        if event.key in GEMM_OPS:
            gemms.append((event.key, [list(s) for s in event.input_shapes if s], event.count, seconds))
    return dict(kinds), gemms


def vae_encode(bundle, resolution: int) -> Tuple[float, float]:
    """(FLOPs, seconds) of encoding one image at `resolution` px."""
    pixels = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            bundle.vae.encode(pixels)
        return float(counter.get_total_flops()), best_of(lambda: bundle.vae.encode(pixels), 2)


def cached_trainer(tmp: Path, resolution: int, images: int):
    from lora_trainer.engine.run import LoraRun
    from lora_trainer.tiny import make_shapes_dataset

    data = make_shapes_dataset(tmp / "data", n=images, size=resolution)
    cfg = shapes_config(data, tmp / "out", resolution, 1, max_steps=100, seed=0, mixed_precision="no",
                        optimizer="adamw", train_text_encoder=False)
    bundle = full_size_sd15_bundle(torch.device("cpu"))
    run = LoraRun(cfg, bundle=bundle, tensorboard=False)
    trainer = run.setup()
    batches = trainer.dataset.epoch_batches(0, 0, 1)
    for step, batch in enumerate(batches):  # fills every cache, warms the allocator
        trainer.optimizer_step(step, [batch])
    return run, trainer, bundle, batches


def measure(resolution: int, images: int, steps: int) -> Dict:
    with tempfile.TemporaryDirectory() as tmp:
        run, trainer, bundle, batches = cached_trainer(Path(tmp), resolution, images)
        step = lambda: trainer.optimizer_step(images, batches[:1])  # noqa: E731
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        flops = step_flops(step)
        kinds, gemms = profile_step(step)
        vae_flops, vae_seconds = vae_encode(bundle, resolution)
        run.close()
    floor = sum(best_gemm_seconds(name, shapes) * calls for name, shapes, calls, _ in gemms)
    return dict(step_seconds=statistics.median(times), flops=flops, seconds_by_kind=kinds,
                gemm_flops=sum(gemm_flops(n, s) * c for n, s, c, _ in gemms), gemm_floor_seconds=floor,
                vae_encode_flops=vae_flops, vae_encode_seconds=vae_seconds, sgemm_peak=sgemm_peak())


def report(r: Dict, peer_step: float, ratio: float, images: int, window: Tuple[int, int]) -> None:
    peak = r["sgemm_peak"]
    total = sum(r["flops"].values())
    step = r["step_seconds"]
    kinds = r["seconds_by_kind"]
    print(f"fp32 matrix-multiply peak (4096^3 mm): {peak / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} threads")
    print(f"cached step: {total / 1e9:.0f} GFLOP in {step:.3f} s = {total / step / 1e9:.0f} GFLOP/s "
          f"({100 * total / step / peak:.0f}% of peak)")
    for op, n in sorted(r["flops"].items(), key=lambda kv: -kv[1]):
        print(f"  {op:60s} {n / 1e9:7.1f} GFLOP")
    print("profiled step, self time by kind: " + ", ".join(f"{k} {v:.3f} s" for k, v in kinds.items()))
    gemm_time = kinds.get("matrix products", 0.0)
    print(f"matrix products: {r['gemm_flops'] / 1e9:.0f} GFLOP in {gemm_time:.3f} s "
          f"({r['gemm_flops'] / max(gemm_time, 1e-9) / 1e9:.0f} GFLOP/s); each alone, in cache: "
          f"{r['gemm_floor_seconds']:.3f} s")
    floor = step - gemm_time + r["gemm_floor_seconds"]  # the profiler's own overhead stays in: an optimistic floor
    print(f"the step with every matrix product at its in-cache speed, the rest as measured: {floor:.3f} s")
    print(f"one VAE encode: {r['vae_encode_flops'] / 1e9:.0f} GFLOP in {r['vae_encode_seconds']:.3f} s "
          f"({r['vae_encode_flops'] / r['vae_encode_seconds'] / 1e9:.0f} GFLOP/s)")
    if peer_step:
        need = peer_step / ratio
        print(f"{ratio}x a peer at {peer_step:.3f} s/step needs {need:.3f} s/step: "
              f"{total / need / 1e9:.0f} GFLOP/s, {100 * total / need / peak:.0f}% of peak over the whole step")
        first, last = window
        encoding = max(0, min(last, images) - first + 1)  # first-epoch steps in the window encode one image each
        work = (last - first + 1) * total + encoding * r["vae_encode_flops"]
        print(f"over steps {first}-{last} with caching overlapped ({encoding} of them also encode an image, "
              f"{images} images at batch 1): {work / 1e9:.0f} GFLOP in {(last - first + 1) * need:.1f} s needs "
              f"{work / ((last - first + 1) * need) / 1e9:.0f} GFLOP/s, "
              f"{100 * work / ((last - first + 1) * need) / peak:.0f}% of peak")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="timed cached steps (median)")
    ap.add_argument("--peer-step", type=float, default=0.0, help="a peer's seconds per cached step")
    ap.add_argument("--ratio", type=float, default=1.5)
    ap.add_argument("--window", type=int, nargs=2, default=(3, 12), help="steps a peer comparison averages over")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args()
    result = measure(a.resolution, a.images, a.steps)
    report(result, a.peer_step, a.ratio, a.images, tuple(a.window))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
