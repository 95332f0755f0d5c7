"""Data-parallel scaling: images/s of one process against N processes under torchrun (not a test).

Each variant trains the same LoRA on the same data at the same global batch: one process at `batch_size N*B`
with all the CPU threads, the same with threads / N (what one rank of the next gets), and `torchrun
--nproc_per_node N` at `batch_size B` per process with threads / N each (on a GPU machine: one GPU per
process; the thread rows then only say how much the host side matters). Images/s are timed from the end of the warm-up steps to the last
step, read by rank 0 (every rank steps together). Model: the tiny random SD1 (`--model tiny`, the CI one) or
a diffusers folder (`--model PATH`).

    python benchmarks/bench_ddp.py                                  # CPU: tiny model, 1 vs 2 processes
    python benchmarks/bench_ddp.py --nproc 4 --batch 2 --resolution 512 --model /models/sd15-diffusers  # GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


class StepClock:
    """perf_counter at the end of every optimizer step (a lora_trainer callback)."""

    def __init__(self) -> None:
        self.times: List[float] = []

    def on_event(self, event: Any) -> None:
        from lora_trainer.events import StepEnded

        if isinstance(event, StepEnded):
            self.times.append(time.perf_counter())

    def should_stop(self) -> bool:
        return False


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): train, and on rank 0 write images/s to args.result."""
    from common import shapes_config
    from lora_trainer.engine import distributed
    from lora_trainer.engine.run import LoraRun

    config = shapes_config(Path(args.data), Path(args.out), args.resolution, args.per_process_batch,
                           base_model=args.model, max_steps=args.warmup + args.steps, save_steps=0,
                           device=args.device, mixed_precision=args.precision, log_every_n_steps=args.steps)
    clock = StepClock()
    with distributed.session(config.device) as dist:
        run = LoraRun(config, [clock], tensorboard=False, dist=dist)
        run.setup()
        run.train()
        run.close()
    if dist.is_main:
        t = clock.times
        seconds = t[-1] - t[args.warmup - 1]
        images = args.steps * args.per_process_batch * dist.world_size
        Path(args.result).write_text(json.dumps({"processes": dist.world_size, "images_per_s": images / seconds,
                                                 "seconds": seconds, "images": images}))


def launch(args: argparse.Namespace, nproc: int, threads: int, data: Path, model: str, work: Path) -> Dict[str, Any]:
    result = work / f"result-{nproc}x{threads}.json"
    common = ["--worker", "--data", str(data), "--model", model, "--out", str(work / f"out-{nproc}x{threads}"),
              "--result", str(result), "--resolution", str(args.resolution), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--device", args.device, "--precision", args.precision,
              "--per-process-batch", str(args.batch * args.nproc // nproc)]
    script = str(HERE / "bench_ddp.py")
    cmd = [sys.executable, script] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT}:{HERE}"}
    subprocess.run(cmd + common, check=True, env=env, cwd=str(HERE), stdout=subprocess.DEVNULL)
    return {**json.loads(result.read_text()), "threads_per_process": threads, "processes": nproc,
            "batch_per_process": args.batch * args.nproc // nproc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    p.add_argument("--batch", type=int, default=1, help="batch_size per process of the data-parallel run")
    p.add_argument("--model", default="tiny", help="tiny (random, built here) or a diffusers folder")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=30, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the median is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="no", help="mixed_precision of both runs")
    p.add_argument("--json", help="write the results here")
    # worker-only
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--result")
    p.add_argument("--per-process-batch", type=int)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from statistics import median

    from lora_trainer.tiny import build_tiny_sd1, make_shapes_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = str(build_tiny_sd1(work / "tiny-sd1")) if args.model == "tiny" else args.model
        data = make_shapes_dataset(work / "data", n=args.images, size=args.resolution)
        cpus = os.cpu_count() or 1
        variants = [(1, cpus), (1, max(1, cpus // args.nproc)), (args.nproc, max(1, cpus // args.nproc))]
        runs: Dict[str, List[Dict[str, Any]]] = {f"{n}x{t}": [] for n, t in variants}
        for _ in range(args.repeats):  # alternating, so a noisy neighbour hits every variant alike
            for nproc, threads in variants:
                runs[f"{nproc}x{threads}"].append(launch(args, nproc, threads, data, model, work))
    print(f"global batch {args.batch * args.nproc}, {args.steps} timed steps after {args.warmup}, "
          f"{args.resolution} px, model {args.model}, device {args.device}, {cpus} CPUs, median of {args.repeats}")
    print("processes  batch/process  threads/process  images/s (each run)")
    rate = {}
    for key, results in runs.items():
        rates = [r["images_per_s"] for r in results]
        rate[key] = median(rates)
        print(f"{results[0]['processes']:9d}  {results[0]['batch_per_process']:13d}  "
              f"{results[0]['threads_per_process']:15d}  {rate[key]:8.2f} ({', '.join(f'{x:.2f}' for x in rates)})")
    keys = list(runs)
    print(f"{args.nproc} processes / 1 process with all threads: {rate[keys[2]] / rate[keys[0]]:.2f}x; "
          f"/ 1 process with {variants[1][1]} thread(s): {rate[keys[2]] / rate[keys[1]]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
