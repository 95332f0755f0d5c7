"""End-to-end check against a running AUTOMATIC1111 WebUI (v1.10) with this extension installed (not a unit test).

Start the WebUI with this repository in its `extensions/` folder (a checkout or a symlink) and a checkpoint
loaded (SD1, SD2 or SDXL; a randomly initialised one is enough), then run this script. It trains a short
LoRA on the loaded checkpoint through the extension's HTTP API (POST /lora_trainer/v1/train, polling
/lora_trainer/v1/status) with a sample prompt, and checks, printing `ok` or `FAIL` for each:

- the LoRA Trainer tab is on the page and shows no start-up error (the host was detected);
- a sample was rendered through the WebUI's txt2img and became the LoRA card's preview image;
- the job finished, and GET /sdapi/v1/loras lists the new LoRA;
- the Lora page shows it for the loaded model (the file's SD version equals the model's);
- the WebUI's own Lora loader matched every module of the file, and the change its own module types
  compute (`calc_updown`) equals the change this package reads from the file (relative 1e-4), checked
  inside the WebUI process by GET /lora_trainer/v1/verify/{name};
- txt2img without the LoRA is unchanged by training (the model was put back exactly), and with
  `<lora:name:1>` it differs;
- then the sequence people run most: a second training right after that txt2img with the LoRA (the
  WebUI still has it applied) finishes, txt2img without a LoRA is still unchanged, and the second LoRA
  changes the image.

With `--queue` it checks the persistent job queue instead: a training started with POST /train (the tab's
Start) is a queue job listed by GET /jobs, a second /train meanwhile is refused, a training queued through
POST /jobs runs after it, a txt2img asked while the first ran is answered before the second finished, then
a merge job (the first LoRA into the loaded checkpoint) and a grid job (the LoRA x two weights, rendered by
the WebUI) run against the real loaded model.

Exit code 0 when every check holds. Timings of the txt2img calls and of the job are printed.

    python tools/webui_e2e.py --data DIR [--url http://127.0.0.1:7860] [--name NAME] [--steps 6]
        [--resolution 128] [--image-size 64] [--lr 1e-2]
        [--no-text-encoder]   (UNet only; by default the text encoder(s) train too, OpenCLIP included)
        [--network-type lora|locon|loha|lokr] [--dora]   (the adapter kind; --dora sets use_dora)

DIR is a folder of a few captioned images (e.g. `python -c "from lora_trainer.tiny import make_shapes_dataset;
make_shapes_dataset('shapes')"`); the prompt uses the trigger word `shpz`.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def call(url: str, path: str, payload=None, timeout: float = 1800):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if payload is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def txt2img(url: str, prompt: str, size: int) -> np.ndarray:
    res = call(url, "/sdapi/v1/txt2img", dict(prompt=prompt, width=size, height=size, steps=4, cfg_scale=7,
                                              seed=1234, sampler_name="Euler"))
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(res["images"][0]))).convert("RGB")).astype(np.float32)


def train(a, name: str, prompt: str) -> dict:
    """One training through the API, polled to its end; returns the final job status."""
    config = dict(train_data_dir=a.data, output_name=name, resolution=a.resolution, min_bucket_reso=64,
                  max_bucket_reso=max(256, a.resolution), lora_rank=4, batch_size=1, max_steps=a.steps,
                  learning_rate=a.lr, trigger_word="shpz", train_text_encoder=not a.no_text_encoder,
                  sample_prompts=[f"{prompt} --w {a.image_size} --h {a.image_size} --s 4 --d 3"],
                  sample_every_n_steps=a.steps, network_type=a.network_type,
                  network_args={"use_dora": True} if a.dora else {}, save_precision=a.save_precision)
    print(f"{name}: network_type {a.network_type}" + (" with DoRA" if a.dora else "") + f", saved in {a.save_precision}")
    t0 = time.time()
    call(a.url, "/lora_trainer/v1/train", config)
    while True:
        status = call(a.url, "/lora_trainer/v1/status")
        if status["state"] not in ("running", "stopping"):
            break
        time.sleep(3)
    print(f"job {status['state']} after {time.time() - t0:.0f} s: {status['step']}/{status['total_steps']} steps, "
          f"loss {status['loss']}, file {status['lora_path']}, error {status['error']}")
    return status


def training_config(a, name: str) -> dict:
    return dict(train_data_dir=a.data, output_name=name, resolution=a.resolution, min_bucket_reso=64,
                max_bucket_reso=max(256, a.resolution), lora_rank=4, batch_size=1, max_steps=a.steps,
                learning_rate=a.lr, trigger_word="shpz", train_text_encoder=not a.no_text_encoder)


def job_states(a, ids) -> dict:
    return {j["id"]: j for j in call(a.url, "/lora_trainer/v1/jobs")["jobs"] if j["id"] in ids}


def wait_jobs(a, ids, prompt: str) -> tuple:
    """Poll the queue until jobs `ids` have finished, asking for a txt2img between polls; returns
    (the jobs by id, [(seconds a txt2img took, {id: state} when it was asked, {id: state} when answered)])."""
    answered = []
    while True:
        jobs = job_states(a, ids)
        if all(j["state"] not in ("queued", "running") for j in jobs.values()):
            return jobs, answered
        t = time.time()
        txt2img(a.url, prompt, a.image_size)
        after = job_states(a, ids)
        answered.append((time.time() - t, {i: j["state"] for i, j in jobs.items()},
                         {i: j["state"] for i, j in after.items()}))
        time.sleep(1)


def wait_for_routes(url: str, timeout: float = 300) -> None:
    """The WebUI answers /sdapi/* before its app_started callbacks add the extension's routes: wait for them."""
    deadline = time.time() + timeout
    while True:
        try:
            call(url, "/lora_trainer/v1/jobs")
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.time() > deadline:
                raise
        time.sleep(2)


def start_two(a) -> tuple:
    """The first training through /train (the tab's Start: a queue job run at once), the second queued
    through POST /jobs behind it; returns (their ids, the answer of a second /train meanwhile)."""
    first = call(a.url, "/lora_trainer/v1/train", training_config(a, f"{a.name}_q1"))
    running = [j for j in call(a.url, "/lora_trainer/v1/jobs")["jobs"] if j["state"] == "running"]
    second = call(a.url, "/lora_trainer/v1/jobs", {"kind": "train", "config": training_config(a, f"{a.name}_q2")})
    try:
        refused = call(a.url, "/lora_trainer/v1/train", training_config(a, f"{a.name}_q3"))
    except urllib.error.HTTPError as exc:
        refused = {"status": exc.code, **json.loads(exc.read() or b"{}")}
    print(f"/train: {first['state']} {first['name']}; listed running: {[(j['id'], j['name']) for j in running]}; "
          f"a second /train: {refused}")
    return [running[0]["id"] if running else -1, second["id"]], refused


def queue_round(a, prompt: str) -> dict:
    """Two trainings (one started, one queued), txt2img between; then a merge and a grid job on the loaded model."""
    wait_for_routes(a.url)
    t0 = time.time()
    ids, refused = start_two(a)
    jobs, answered = wait_jobs(a, ids, prompt)
    first, second = jobs.get(ids[0], {"state": "missing"}), jobs[ids[1]]
    for job in (first, second):
        print(f"job {job.get('id')} {job['name']} {job['state']}: {job['step']}/{job['total']} steps, "
              f"loss {job['loss']}, {job['result']}, error {job['error']}")
    print(f"two trainings: {time.time() - t0:.0f} s; txt2img (seconds, states asked, states answered): "
          f"{[(round(s), list(b.values()), list(e.values())) for s, b, e in answered]}")
    lora = first["result"].get("lora_path", "")
    extra, _ = wait_jobs(a, [call(a.url, "/lora_trainer/v1/jobs", body)["id"] for body in (
        {"kind": "merge", "config": {"lora": lora, "weight": 0.5, "out_name": f"{a.name}_merged"}},
        {"kind": "grid", "config": {"loras": [lora], "prompt": prompt, "weights": [0, 1], "size": a.image_size,
                                    "steps": 4}})], prompt)
    merge, grid = sorted(extra.values(), key=lambda j: j["id"])
    print(f"merge job: {merge['state']} {merge['result']} {merge['error']}; grid job: {grid['state']} "
          f"{grid['result']} {grid['error']}")
    loras = {x["name"] for x in call(a.url, "/sdapi/v1/loras")}
    a1, a2 = ids
    return {
        "/train started a job listed by GET /jobs": first["name"] == f"{a.name}_q1",
        "a second /train while it ran was refused with 'already running'":
            refused.get("status") == 400 and "already running" in str(refused.get("detail")),
        "both trainings finished": first["state"] == second["state"] == "done",
        "they ran one after the other": (second["started_at"] or 0) >= (first["finished_at"] or 1e30),
        "a txt2img asked while the first ran was answered before the second finished":
            any(b.get(a1) == "running" and e.get(a2) in ("queued", "running") for _, b, e in answered),
        "GET /sdapi/v1/loras lists both LoRAs": {f"{a.name}_q1", f"{a.name}_q2"} <= loras,
        "a merge job into the loaded checkpoint wrote its file":
            merge["state"] == "done" and Path(merge["result"].get("path", "")).is_file(),
        "a grid job rendered by the WebUI wrote its image":
            grid["state"] == "done" and Path(grid["result"].get("path", "")).is_file(),
    }


def lora_name(status: dict, fallback: str) -> str:
    return status["lora_path"].rsplit("/", 1)[-1].rsplit(".", 1)[0] if status["lora_path"] else fallback


def first_round_checks(a, status: dict, name: str, before, after, with_lora) -> dict:
    """What the first training must show: tab, sample and card, the Lora list, every module matched."""
    listed = [lora["name"] for lora in call(a.url, "/sdapi/v1/loras")]
    verify = call(a.url, f"/lora_trainer/v1/verify/{name}")
    page = urllib.request.urlopen(a.url + "/config", timeout=60).read().decode()
    preview = Path(status["lora_path"]).with_name(f"{name}.preview.png") if status["lora_path"] else None
    return {
        "the LoRA Trainer tab is on the page (no start-up error)":
            '"LoRA Trainer"' in page and "lora_trainer_error" not in page,
        f"a sample was taken through the WebUI's txt2img ({len(status['samples'])})": bool(status["samples"]),
        "the sample became the card's preview image": bool(preview and preview.is_file()),
        "job finished": status["state"] == "finished",
        "listed by /sdapi/v1/loras": name in listed,
        f"shown for the loaded model (file {verify.get('sd_version')}, model {verify.get('loaded_model_version')})":
            verify.get("sd_version") == verify.get("loaded_model_version"),
        f"every module matched ({verify['modules_matched']}/{verify['modules_in_file']})":
            verify["modules_in_file"] > 0 and not verify["unmatched"],
        f"the WebUI's computed change equals ours ({verify.get('deltas_compared')} modules, max relative "
        f"difference {verify.get('max_delta_rel_error', float('nan')):.1e})":
            verify.get("deltas_compared", 0) > 0 and verify.get("max_delta_rel_error", 1.0) < 1e-4,
        "txt2img without the LoRA unchanged by training": float(np.abs(after - before).max()) == 0.0,
        f"<lora:{name}:1> changes the image (mean abs diff {np.abs(with_lora - after).mean():.2f}/255)":
            float(np.abs(with_lora - after).mean()) > 0.5,
    }


def run_options(name_prefix: str) -> argparse.ArgumentParser:
    """The options every end-to-end script takes: the host's URL, the data and the short training run."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:7860")
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", default=f"{name_prefix}_{int(time.time())}")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--no-text-encoder", action="store_true")
    ap.add_argument("--network-type", default="lora", choices=["lora", "locon", "loha", "lokr"])
    ap.add_argument("--dora", action="store_true", help="use_dora (locon, loha, lokr)")
    ap.add_argument("--save-precision", default="fp16", choices=["fp16", "bf16", "fp32"],
                    help="fp32 to compare the host's LoHa/LoKr formulas at 1e-4: A1111 multiplies their factors "
                         "in the file's dtype")
    ap.add_argument("--one-round", action="store_true", help="skip the second training after a <lora:...> txt2img")
    return ap


def main() -> int:
    ap = run_options("e2e")
    ap.add_argument("--queue", action="store_true", help="check the job queue (see the module docstring)")
    a = ap.parse_args()
    prompt = "shpz, a red circle"
    if a.queue:
        checks = queue_round(a, prompt)
        for text, ok in checks.items():
            print(f"{'ok  ' if ok else 'FAIL'} {text}")
        return 0 if all(checks.values()) else 1
    started = time.time()
    before = txt2img(a.url, prompt, a.image_size)
    print(f"txt2img before training: {time.time() - started:.0f} s")
    status = train(a, a.name, prompt)
    name = lora_name(status, a.name)
    t1 = time.time()
    after = txt2img(a.url, prompt, a.image_size)
    with_lora = txt2img(a.url, f"{prompt} <lora:{name}:1>", a.image_size)  # leaves the LoRA active in the WebUI
    print(f"two txt2img after training: {time.time() - t1:.0f} s")
    first = first_round_checks(a, status, name, before, after, with_lora)
    report(first)
    if a.one_round:
        return 0 if all(first.values()) else 1
    # the most common sequence: train again right after trying the LoRA, then generate again
    again = train(a, f"{a.name}_again", prompt)
    name2 = lora_name(again, f"{a.name}_again")
    after2 = txt2img(a.url, prompt, a.image_size)
    with_lora2 = txt2img(a.url, f"{prompt} <lora:{name2}:1>", a.image_size)
    second = {
        f"a second training right after a txt2img with <lora:{name}:1> finished ({again['error']})":
            again["state"] == "finished",
        "txt2img without a LoRA still unchanged after both trainings": float(np.abs(after2 - before).max()) == 0.0,
        f"<lora:{name2}:1> changes the image (mean abs diff {np.abs(with_lora2 - after2).mean():.2f}/255)":
            float(np.abs(with_lora2 - after2).mean()) > 0.5,
    }
    report(second)
    return 0 if all(first.values()) and all(second.values()) else 1


def report(checks: dict) -> None:
    for text, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
