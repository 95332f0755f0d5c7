"""Check install.py against the WebUI v1.10.1 pins (not a unit test: it builds a virtual env).

Creates a venv with the local CPU torch and the WebUI's pinned packages, runs install.py twice the
way the WebUI does (as a script, with a `launch` module offering is_installed / run_pip), and checks
that every pinned version is unchanged, that only new packages were added, that the second run adds
nothing, and that `import lora_trainer` works. Exit 0 when all hold.

    python tools/check_webui_install.py [--venv DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = {"transformers": "4.30.2", "accelerate": "0.21.0", "gradio": "3.41.2", "safetensors": "0.4.2",
        "numpy": "1.26.2", "pillow": "9.5.0", "fastapi": "0.94.0", "tokenizers": "0.13.3", "torch": "2.13.0"}
# Other WebUI requirements the extension's imports meet (unpinned there or pinned loosely).
WEBUI_EXTRAS = ["omegaconf==2.2.3", "pyyaml", "tqdm", "huggingface_hub<1.0", "open-clip-torch==2.20.0",
                "einops==0.4.1", "pytorch_lightning==1.9.4"]

LAUNCH_SHIM = '''
import importlib.metadata, importlib.util, subprocess, sys
def is_installed(package):
    try:
        return importlib.metadata.distribution(package) is not None
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.util.find_spec(package) is not None
        except ModuleNotFoundError:
            return False
def run_pip(command, desc=None, live=False):
    print(f"Installing {desc}")
    subprocess.run(f'"{sys.executable}" -m pip {command} --prefer-binary', shell=True, check=True)
'''


def freeze(python: Path) -> dict:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                         check=True).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", default=None, help="keep the pinned venv here (default: a temporary one, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webui_pins_") as scratch:  # 1.6 GB each run: never left behind
        return check(Path(args.venv or scratch) / "venv", Path(scratch))


def check(venv: Path, scratch: Path) -> int:
    """install.py twice into a venv with the WebUI's pins: nothing of theirs changes, the imports work."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        pins = [f"{k}=={v}" for k, v in PINS.items()]
        subprocess.run(pip + ["-c", "/dev/stdin", *pins, *WEBUI_EXTRAS], input="torch==2.13.0\n", text=True,
                       check=True)
    before = freeze(python)
    shim = scratch / "launch_shim"
    shim.mkdir(exist_ok=True)
    (shim / "launch.py").write_text(LAUNCH_SHIM)
    env = {**os.environ, "PYTHONPATH": str(shim)}
    logs = []
    for run in (1, 2):
        res = subprocess.run([str(python), str(ROOT / "install.py")], env=env, capture_output=True, text=True)
        logs.append(res.stdout.strip())
        print(f"--- install.py run {run} (exit {res.returncode}):\n{res.stdout.strip()}\n{res.stderr.strip()[-800:]}")
        if res.returncode:
            return 1
        if run == 1:
            after_first = freeze(python)
    after = freeze(python)
    ok = True
    for name, version in before.items():
        if after.get(name) != version:
            print(f"CHANGED: {name} {version} -> {after.get(name)}")
            ok = False
    for name, version in PINS.items():
        have = after.get(name, "")
        if have.split("+")[0] != version:
            print(f"PIN BROKEN: {name} expected {version}, have {have}")
            ok = False
    added = sorted(set(after) - set(before))
    print("added by install.py:", ", ".join(f"{n}=={after[n]}" for n in added) or "nothing")
    if after != after_first:
        print("the second run changed the environment")
        ok = False
    imp = subprocess.run([str(python), "-c", "import lora_trainer, diffusers, peft; from lora_trainer.engine.run import "
                          "train; from lora_trainer.service import HostedService; from lora_trainer.hosts import A1111Host; print('import ok', "
                          "diffusers.__version__, peft.__version__)"],
                         cwd=str(ROOT), capture_output=True, text=True)
    print(imp.stdout.strip() or imp.stderr.strip()[-800:])
    ok = ok and imp.returncode == 0 and "requirements present" in logs[1]
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
