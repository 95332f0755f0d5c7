"""End-to-end check against a running Forge Neo with this extension installed (not a unit test).

Start Forge Neo with this repository in its `extensions/` folder (a checkout or a symlink) and an SD1.5 or
SDXL checkpoint selected (a randomly initialised one is enough: tools/make_random_checkpoint.py), then run
this script. It trains a short LoRA on Forge's loaded model, in place, through the extension's HTTP API
(POST /lora_trainer/v1/train, polling /lora_trainer/v1/status), and checks, printing `ok` or `FAIL`:

- the LoRA Trainer tab is on the page and shows no start-up error (Forge Neo was detected);
- the job finished, the LoRA was written into Forge's Lora folder and GET /sdapi/v1/loras lists it;
- Forge's own LoRA loader matched every module of the file and its patchers accepted every patch
  (checked inside the Forge process by GET /lora_trainer/v1/verify/{name});
- the model's weights hash (GET /lora_trainer/v1/model_digest: UNet, text encoders, VAE) is unchanged;
- txt2img without the LoRA is bit-identical to before training, and with `<lora:name:1>` it differs.

With `--pid` (Forge's process id, same machine) it samples the process's RSS every 0.1 s and prints the
peak growth during the job next to the size of the UNet's weights. Exit code 0 when every check holds.

    python tools/forge_e2e.py --data DIR [--url http://127.0.0.1:7860] [--name NAME] [--steps 6]
        [--resolution 128] [--image-size 64] [--lr 1e-2] [--no-text-encoder] [--pid PID]
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from webui_e2e import call, run_options, txt2img

GIB = 1024 ** 3


def rss(pid: int) -> int:
    """Resident set size of process `pid` in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Samples a process's RSS until stopped; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.done = pid, [rss(pid)], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.samples.append(rss(self.pid))


def train(url: str, config: dict) -> dict:
    call(url, "/lora_trainer/v1/train", config)
    while True:
        status = call(url, "/lora_trainer/v1/status")
        if status["state"] not in ("running", "stopping"):
            return status
        time.sleep(1)


def main() -> int:
    ap = run_options("forge_e2e")
    ap.add_argument("--pid", type=int, default=None)
    a = ap.parse_args()
    prompt = "shpz, a red circle"
    t = time.time()
    before = txt2img(a.url, prompt, a.image_size)  # also makes Forge load its lazy model
    digest_before = call(a.url, "/lora_trainer/v1/model_digest")
    print(f"txt2img + weights digest before training: {time.time() - t:.0f} s")
    config = dict(train_data_dir=a.data, output_name=a.name, resolution=a.resolution, min_bucket_reso=64,
                  max_bucket_reso=max(256, a.resolution), lora_rank=4, batch_size=1, max_steps=a.steps,
                  learning_rate=a.lr, trigger_word="shpz", train_text_encoder=not a.no_text_encoder,
                  network_type=a.network_type, network_args={"use_dora": True} if a.dora else {},
                  save_precision=a.save_precision)
    print(f"{a.name}: network_type {a.network_type}" + (" with DoRA" if a.dora else "") + f", saved in {a.save_precision}")
    sampler = RssSampler(a.pid) if a.pid else None
    if sampler:
        sampler.start()
    t = time.time()
    status = train(a.url, config)
    if sampler:
        sampler.done.set()
        sampler.join()
    print(f"job {status['state']} after {time.time() - t:.0f} s: {status['step']}/{status['total_steps']} steps, "
          f"loss {status['loss']}, file {status['lora_path']}, error {status['error']}")
    name = Path(status["lora_path"]).stem if status["lora_path"] else a.name
    listed = [lora["name"] for lora in call(a.url, "/sdapi/v1/loras")]
    verify = safe_call(a.url, f"/lora_trainer/v1/verify/{name}",
                       {"modules_in_file": 0, "modules_matched": 0, "unmatched": [], "patches_refused": []})
    digest_after = call(a.url, "/lora_trainer/v1/model_digest")
    t = time.time()
    after = txt2img(a.url, prompt, a.image_size)
    with_lora = txt2img(a.url, f"{prompt} <lora:{name}:1>", a.image_size)
    print(f"two txt2img after training: {time.time() - t:.0f} s")
    page = call_text(a.url + "/config")
    unet_bytes = digest_before["bytes"]["unet"]
    unchanged = verify.get("max_unchanged_rel_change", float("nan"))
    checks = {
        "the LoRA Trainer tab is on the page (no start-up error)":
            '"LoRA Trainer"' in page and "lora_trainer_error" not in page,
        "job finished": status["state"] == "finished",
        f"written into Forge's Lora folder ({status['lora_path']})": bool(status["lora_path"])
            and Path(status["lora_path"]).is_file(),
        "listed by /sdapi/v1/loras": name in listed,
        f"Forge's loader matched every module ({verify['modules_matched']}/{verify['modules_in_file']}, "
        f"{len(verify['patches_refused'])} patches refused)":
            verify["modules_in_file"] > 0 and not verify["unmatched"] and not verify["patches_refused"],
        f"Forge's computed change equals ours ({verify.get('deltas_compared')} modules, max relative difference "
        f"{verify.get('max_delta_rel_error', float('nan')):.1e})":
            verify.get("deltas_compared", 0) > 0 and verify.get("max_delta_rel_error", 1.0) < 1e-4,
        f"modules training left unchanged stay so in Forge (largest change {unchanged:.1e} of the weight: the "
        f"fp32 rounding of DoRA's stored norms)": unchanged < 1e-5,
        f"model weights hash unchanged ({digest_before['sha256'][:16]} -> {digest_after['sha256'][:16]})":
            digest_before["sha256"] == digest_after["sha256"],
        "txt2img without the LoRA bit-identical to before training": float(np.abs(after - before).max()) == 0.0,
        f"<lora:{name}:1> changes the image (mean abs diff {np.abs(with_lora - after).mean():.2f}/255)":
            float(np.abs(with_lora - after).mean()) > 0.5,
    }
    if sampler:
        growth = max(sampler.samples) - sampler.samples[0]
        print(f"RSS at job start {sampler.samples[0] / GIB:.2f} GiB, peak {max(sampler.samples) / GIB:.2f} GiB, "
              f"growth {growth / GIB:.2f} GiB; UNet weights {unet_bytes / GIB:.2f} GiB "
              f"({len(sampler.samples)} samples)")
        checks[f"peak RSS growth {growth / GIB:.2f} GiB < UNet weights {unet_bytes / GIB:.2f} GiB"] = growth < unet_bytes
    for text, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    return 0 if all(checks.values()) else 1


def safe_call(url: str, path: str, fallback: dict) -> dict:
    """`call`, or `fallback` plus the error when the route answers with an error."""
    try:
        return call(url, path)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, the other checks still run
        print(f"GET {path}: {exc}: {getattr(exc, 'read', lambda: b'')().decode()[:500]}")
        return {**fallback, "error": str(exc)}


def call_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read().decode()


if __name__ == "__main__":
    sys.exit(main())
