"""Issue 26: the LoRA Trainer beside kohya sd-scripts and the diffusers LoRA example on one CPU workload.

Each tool runs as its own process, in alternating repeats (ours, kohya, diffusers, ours, ...), on a full-size
SD1.5 with random weights from ONE single-file checkpoint: 8 images at 256 px, batch 1, rank 8 (alpha 8), UNet
only, AdamW at 1e-4 constant, fp32, SDPA, no sampling, no intermediate saves. Our trainer and kohya read the
file itself; the diffusers example reads a diffusers folder converted from it once, before any timing, and the
UNet weights each tool loads are compared once (sha256 of every tensor as fp32).

Measured from outside each process: time to first step (launch to the TensorBoard stamp of step 1's loss),
s/step ((stamp of the last step - stamp of step 2) / (steps - 2)), total wall, and the peak resident memory of
its whole process tree (sum of VmRSS over the tree every 0.1 s, or the process's own VmHWM if larger; not
ru_maxrss, which keeps the forking parent's resident size across exec).
Nothing of the peers is copied here: their checkouts and Pythons are arguments.

    python benchmarks/bench_cpu_peers.py --kohya /work/peers/sd-scripts \\
        --kohya-python /work/peers/kohya-venv/bin/python \\
        --diffusers-example /work/peers/diffusers-example/train_text_to_image_lora.py \\
        --diffusers-python /work/peers/diffusers-venv/bin/python --isa avx2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROWS = {"ours": "LoRA Trainer (defaults)", "kohya-cache": "kohya sd-scripts, `--cache_latents --sdpa`",
        "kohya": "kohya sd-scripts, `--sdpa`", "diffusers": "diffusers LoRA example (attention modules only)"}
TAGS = {"ours": "loss", "kohya-cache": "loss/current", "kohya": "loss/current", "diffusers": "train_loss"}
VERSIONS = ("import json, sys, torch, importlib.metadata as m\nv = {}\nfor p in ('diffusers', 'transformers', "
            "'accelerate', 'peft', 'datasets'):\n    try: v[p] = m.version(p)\n    except Exception: pass\n"
            "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__, "
            "'threads': torch.get_num_threads(), **v}))")


# ---------------------------------------------------------------- weights check (also runs under peer Pythons)
# our trainer caches latents as the first epoch (8 images at batch 1: steps 1-8) needs them; from step 9 on every
# tool trains on what it has cached (or, diffusers, encodes every step as always)
LATE_FROM = 8

def unet_digest(state: Dict[str, Any]) -> Dict[str, Any]:
    """sha256 over every tensor as fp32: `named` includes the names, `values` only the sorted tensor hashes."""
    import torch

    named, hashes, numel = hashlib.sha256(), [], 0
    for key in sorted(state):
        t = state[key].detach().to(torch.float32).contiguous()
        h = hashlib.sha256(t.numpy().data).hexdigest()
        named.update(key.encode() + h.encode())
        hashes.append(h)
        numel += t.numel()
    return {"tensors": len(state), "numel": numel, "named": named.hexdigest()[:16],
            "values": hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()[:16]}


def peer_digest(kind: str, path: str, a: argparse.Namespace) -> None:
    """Print the digest of the UNet a tool would train: ours (after writing the prepared folders into `path`),
    kohya's own single-file conversion, or the folder's UNet as diffusers loads it."""
    if kind == "ours":
        return prepare(a.model, a.data, Path(path))
    if kind == "kohya":
        sys.path.insert(0, str(a.kohya))
        from library import model_util

        _, _, unet = model_util.load_models_from_stable_diffusion_checkpoint(False, path, "cpu")
    else:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    print("DIGEST " + json.dumps(unet_digest(unet.state_dict())))


# ---------------------------------------------------------------- one process, measured from outside
def tree_pids(root: int) -> List[int]:
    """`root` and all its descendants (from /proc/*/stat; this kernel may lack /proc/PID/task/TID/children)."""
    children: Dict[int, List[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def status_kb(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status field in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_measured(command: List[str], cwd: Path, env: Dict[str, str], log: Path, timeout: float) -> Dict[str, Any]:
    """Run `command` (stdout+stderr to `log`) in its own session; exit code, launch time, wall and peak tree RSS
    (polled every 0.1 s; the process's VmHWM catches its own peaks between polls)."""
    peak_kb, pids, scanned = 0, [], 0.0
    with open(log, "w") as out:
        t0 = time.time()
        proc = subprocess.Popen(command, cwd=str(cwd), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while True:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.time() - scanned > 1.0:  # the tree rarely changes: rescan it once a second
                    pids, scanned = tree_pids(proc.pid), time.time()
                peak_kb = max(peak_kb, sum(status_kb(p) for p in pids), status_kb(proc.pid, "VmHWM"))
                if time.time() - t0 > timeout:
                    kill_group(proc.pid)
                time.sleep(0.1)
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise
        kill_group(proc.pid)  # anything it left behind in its session
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"code": proc.returncode, "t0": t0, "wall_s": time.time() - t0,
            "peak_gib": peak_kb / 2**20}


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-lines:])


# ---------------------------------------------------------------- the tools' command lines
def ours_command(a: argparse.Namespace, out: Path) -> List[str]:
    """Our trainer on the single file, `--precision` (fp32 by default), its defaults otherwise; the config
    written into `out`."""
    import yaml

    cfg = {"base_model": str(a.model), "train_data_dir": str(a.data), "output_dir": str(out / "output"),
           "output_name": "bench", "resolution": 256, "min_bucket_reso": 64, "max_bucket_reso": 256,
           "batch_size": 1, "lora_rank": 8, "lora_alpha": 8, "train_text_encoder": False, "optimizer": "adamw",
           "learning_rate": 1e-4, "lr_scheduler": "constant", "max_train_steps": a.steps, "seed": 0,
           "mixed_precision": a.precision, "sample_every_n_steps": 0, "log_every_n_steps": 1}
    (out / "ours.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return [sys.executable, "-m", "lora_trainer", "train", "--config", str(out / "ours.yaml")]


def kohya_command(a: argparse.Namespace, prep: Dict[str, Path], out: Path, cache: bool) -> List[str]:
    """train_network.py on the single file (as its users run it), tokenizer from the converted folder."""
    return [a.kohya_python, str(a.kohya / "train_network.py"),
            "--pretrained_model_name_or_path", str(a.model), "--tokenizer_cache_dir", str(prep["tokenizers"]),
            "--train_data_dir", str(prep["dreambooth"]), "--caption_extension", ".txt",
            "--output_dir", str(out / "output"), "--output_name", "kohya_bench", "--save_model_as", "safetensors",
            "--logging_dir", str(out / "logs"), "--log_with", "tensorboard",
            "--network_module", "networks.lora", "--network_dim", "8", "--network_alpha", "8",
            "--network_train_unet_only", "--resolution", "256,256", "--train_batch_size", "1",
            "--max_train_steps", str(a.steps), "--learning_rate", "1e-4", "--optimizer_type", "AdamW",
            "--lr_scheduler", "constant", "--mixed_precision", a.precision, "--seed", "0",
            "--max_data_loader_n_workers", "0", "--sdpa", *(["--cache_latents"] if cache else [])]


def diffusers_command(a: argparse.Namespace, prep: Dict[str, Path], out: Path) -> List[str]:
    """The diffusers example on the converted folder and the imagefolder (file_name,text metadata.csv)."""
    return [a.diffusers_python, str(a.diffusers_example),
            "--pretrained_model_name_or_path", str(prep["folder"]), "--train_data_dir", str(prep["imagefolder"]),
            "--image_column", "image", "--caption_column", "text", "--resolution", "256",
            "--train_batch_size", "1", "--max_train_steps", str(a.steps), "--learning_rate", "1e-4",
            "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--rank", "8", "--mixed_precision", a.precision,
            "--dataloader_num_workers", "0", "--seed", "0", "--report_to", "tensorboard",
            "--checkpointing_steps", "100000", "--output_dir", str(out / "output"),
            "--cache_dir", str(out / "hf_cache")]


def command_for(tool: str, a: argparse.Namespace, prep: Dict[str, Path], out: Path) -> "tuple[List[str], Path]":
    """The command line of `tool` and the folder its TensorBoard events land in."""
    if tool == "ours":
        return ours_command(a, out), out / "output" / "logs"
    if tool.startswith("kohya"):
        return kohya_command(a, prep, out, tool == "kohya-cache"), out / "logs"
    return diffusers_command(a, prep, out), out / "output" / "logs"


def run_tool(tool: str, a: argparse.Namespace, prep: Dict[str, Path], env: Dict[str, str], out: Path
             ) -> Dict[str, Any]:
    """One measured run of `tool` in a fresh `out` folder; raises RuntimeError with its last lines on failure."""
    from kohya_loop import step_times

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command, logs = command_for(tool, a, prep, out)
    cwd = a.kohya if tool.startswith("kohya") else HERE.parent
    r = run_measured(command, cwd, with_repo(env) if tool == "ours" else env, out / "run.log", a.timeout)
    if r["code"] != 0:
        raise RuntimeError(f"exit {r['code']}:\n{tail(out / 'run.log')}")
    times = step_times(logs, TAGS[tool])
    if not {1, 2, a.steps} <= set(times):
        raise RuntimeError(f"TensorBoard '{TAGS[tool]}' under {logs} has steps {sorted(times)}, "
                           f"not 1, 2 and {a.steps}:\n{tail(out / 'run.log')}")
    late = LATE_FROM if a.steps > LATE_FROM and LATE_FROM in times else 2
    return {"s_per_step": (times[a.steps] - times[2]) / (a.steps - 2), "first_step_s": times[1] - r["t0"],
            "s_per_step_late": (times[a.steps] - times[late]) / (a.steps - late),
            "peak_gib": r["peak_gib"], "wall_s": r["wall_s"]}


# ---------------------------------------------------------------- preparation and the weights check
def prep_paths(work: Path) -> Dict[str, Path]:
    return {"folder": work / "sd15_diffusers", "tokenizers": work / "kohya_tokenizers",
            "dreambooth": work / "dreambooth", "imagefolder": work / "imagefolder"}


def prepare(model: Path, data: Path, work: Path) -> None:
    """Once, before timing, in a child process (so that the harness stays small): the diffusers folder (our
    loader's conversion of the single file), kohya's tokenizer folder and DreamBooth-style images, the diffusers
    imagefolder; prints our UNet's digest."""
    from kohya_loop import (KOHYA_SD1_TOKENIZER, write_diffusers_folder, write_dreambooth_folder,
                            write_tokenizer_with_vocab_files)
    from lora_trainer.models import default_families
    from lora_trainer.models.loading import load_bundle

    prep = prep_paths(work)
    for p in prep.values():
        shutil.rmtree(p, ignore_errors=True)
    bundle = load_bundle(str(model), default_families())
    digest = unet_digest(bundle.unet.state_dict())
    write_diffusers_folder(bundle, prep["folder"])
    write_tokenizer_with_vocab_files(bundle.tokenizer, prep["tokenizers"] / KOHYA_SD1_TOKENIZER)
    write_dreambooth_folder(data, prep["dreambooth"])
    prep["imagefolder"].mkdir(parents=True)
    for f in data.iterdir():
        if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") or f.name == "metadata.csv":
            shutil.copy2(f, prep["imagefolder"] / f.name)
    print("DIGEST " + json.dumps(digest))


def child_digest(python: str, kind: str, path: str, a: argparse.Namespace, env: Dict[str, str]
                 ) -> Dict[str, Any]:
    """Run `--digest KIND PATH` under `python`; its digest, or SystemExit with its last lines."""
    cmd = [python, str(Path(__file__).resolve()), "--digest", kind, path, "--model", str(a.model),
           "--data", str(a.data), "--kohya", str(a.kohya)]
    p = subprocess.run(cmd, env=with_repo(env) if kind == "ours" else env, capture_output=True, text=True,
                       cwd=str(HERE.parent))
    line = [x for x in p.stdout.splitlines() if x.startswith("DIGEST ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"{kind} {path}: failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def verify_weights(a: argparse.Namespace, prep: Dict[str, Path], ours: Dict[str, Any], env: Dict[str, str],
                   tools: List[str]) -> Dict[str, Any]:
    """Digests of the UNet each tool loads; raises SystemExit when they differ."""
    digests = {"ours (single file, our loader)": ours}
    if any(t.startswith("kohya") for t in tools):
        digests["kohya (single file, its converter)"] = child_digest(a.kohya_python, "kohya", str(a.model), a, env)
    if "diffusers" in tools:
        digests["diffusers (converted folder)"] = child_digest(a.diffusers_python, "diffusers",
                                                               str(prep["folder"]), a, env)
    for name, d in digests.items():
        print(f"  UNet {name}: {d['tensors']} tensors, {d['numel']:,} values, sha256 {d['values']} "
              f"(with names {d['named']})")
    if len({d["values"] for d in digests.values()}) != 1:
        raise SystemExit("weights check FAILED: the tools would not train the same UNet weights")
    print("  same UNet weights in all tools" + ("" if len({d["named"] for d in digests.values()}) == 1
                                                else " (names differ)"))
    return digests


# ---------------------------------------------------------------- environment, header, table
def with_repo(env: Dict[str, str]) -> Dict[str, str]:
    """`env` with this checkout first on PYTHONPATH (for our trainer only: the peers keep their own modules)."""
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")])))


def tool_env(a: argparse.Namespace, work: Path) -> Dict[str, str]:
    """Offline, unbuffered, HF caches inside `work`; the ISA limit when asked."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONUNBUFFERED="1", HF_HOME=str(work / "hf_home"), TOKENIZERS_PARALLELISM="false")
    if a.isa == "avx2":
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    return env


def header(a: argparse.Namespace, env: Dict[str, str], tools: List[str]) -> Dict[str, Any]:
    """CPU model, ISA limit, and each Python's torch / library versions and thread count."""
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    pythons = {"ours": sys.executable}
    if any(t.startswith("kohya") for t in tools):
        pythons["kohya"] = a.kohya_python
    if "diffusers" in tools:
        pythons["diffusers"] = a.diffusers_python
    info: Dict[str, Any] = {"cpu": model, "isa_limit": a.isa, "precision": a.precision, "cores": os.cpu_count(),
                            "steps": a.steps, "repeats": a.repeats, "model": str(a.model), "data": str(a.data)}
    for name, py in pythons.items():
        p = subprocess.run([py, "-c", VERSIONS], env=env, capture_output=True, text=True)
        info[name] = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-300:]}
    print(f"CPU: {model} ({info['cores']} logical cores); ISA limit: "
          f"{'AVX2 (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS)' if a.isa == 'avx2' else 'none (native)'}; "
          f"mixed precision: {a.precision}")
    for name in pythons:
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in info[name].items()))
    return info


def cell(values: List[float], fmt: str, unit: str) -> str:
    """Median (min-max) of `values`."""
    if not values:
        return "FAILED"
    med = format(statistics.median(values), fmt)
    spread = f" ({format(min(values), fmt)}–{format(max(values), fmt)})" if len(values) > 1 else ""
    return f"{med} {unit}{spread}"


def table(tools: List[str], runs: Dict[str, List[Dict[str, Any]]], steps: int) -> str:
    late = f"steps {LATE_FROM + 1}–{steps}" if steps > LATE_FROM else f"steps 3–{steps}"
    lines = [f"| tool | s/step (steps 3–{steps}) | s/step ({late}, every latent cached) | to first step | peak RSS "
             f"| total wall |", "| --- | --- | --- | --- | --- | --- |"]
    for t in tools:
        ok = [r for r in runs[t] if "error" not in r]
        failed = len(runs[t]) - len(ok)
        name = ROWS[t] + (f" ({failed} of {len(runs[t])} runs FAILED)" if failed and ok else "")
        cols = [cell([r[k] for r in ok], f, u) for k, f, u in
                (("s_per_step", ".2f", "s"), ("s_per_step_late", ".2f", "s"), ("first_step_s", ".1f", "s"),
                 ("peak_gib", ".2f", "GiB"),
                 ("wall_s", ".1f", "s"))]
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("/work/bench/random_sd15.safetensors"),
                    help="single-file SD1.5 checkpoint (ldm layout)")
    ap.add_argument("--data", type=Path, default=Path("/work/bench/shapes256"),
                    help="images + metadata.csv (file_name,text)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_cpu_peers"), help="scratch folder")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tools", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--kohya", type=Path, default=None, help="kohya sd-scripts checkout")
    ap.add_argument("--kohya-python", default=None)
    ap.add_argument("--diffusers-example", type=Path, default=None, help="train_text_to_image_lora.py")
    ap.add_argument("--diffusers-python", default=None)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native")
    ap.add_argument("--precision", choices=["no", "bf16"], default="no",
                    help="every tool's --mixed_precision: no (fp32, what a CPU without AMX runs) or bf16")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--json", type=Path, default=None, help="results file (default WORK/results.json)")
    ap.add_argument("--no-verify", action="store_true", help="skip the once-only UNet weights check")
    ap.add_argument("--digest", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.digest is None:
        if a.steps < 3:
            ap.error("--steps must be at least 3 (s/step is measured from step 2 to the last)")
        need = {"kohya": (a.kohya, a.kohya_python), "diffusers": (a.diffusers_example, a.diffusers_python)}
        for tool in a.tools:
            if None in need.get(tool.split("-")[0], ()):
                ap.error(f"{tool} needs --{tool.split('-')[0]} and --{tool.split('-')[0]}-python")
    return a


def main(argv: Optional[List[str]] = None) -> None:
    a = parse_args(argv)
    if a.digest:
        return peer_digest(a.digest[0], a.digest[1], a)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = tool_env(a, work)
    info = header(a, env, a.tools)
    print("preparing (not timed): converted folder, image folders, weights check ...", flush=True)
    prep, ours = prep_paths(work), child_digest(sys.executable, "ours", str(work), a, env)
    info["unet_digests"] = None if a.no_verify else verify_weights(a, prep, ours, env, a.tools)
    runs: Dict[str, List[Dict[str, Any]]] = {t: [] for t in a.tools}
    for rep in range(a.repeats):
        for tool in a.tools:
            print(f"repeat {rep + 1}/{a.repeats}: {tool} ...", flush=True)
            try:
                r = run_tool(tool, a, prep, env, work / "runs" / tool)
                print("  " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
            except RuntimeError as exc:
                r = {"error": str(exc)}
                print(f"  {tool} FAILED: {exc}", flush=True)
            runs[tool].append(r)
    print()
    print(table(a.tools, runs, a.steps))
    out = a.json or work / "results.json"
    out.write_text(json.dumps({"info": info, "rows": {t: ROWS[t] for t in a.tools}, "runs": runs}, indent=1))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
