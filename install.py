"""WebUI install hook: adds what LoRA Trainer needs that the WebUI lacks, without touching its pins.

The WebUI runs this file before start (`launch.is_installed` / `launch.run_pip` are its helpers).
Rule: a package the WebUI already has is never upgraded or downgraded. Every install runs with a
constraints file listing the exact version of every package already installed, so pip's resolver can
only add packages; if it cannot, nothing is installed and one line says why. Idempotent: a second run
installs nothing. One printed line per action.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import tempfile

# Versions that import and work beside the WebUI v1.10.1 pins (transformers 4.30.2, accelerate 0.21.0):
# newer diffusers/peft need newer transformers/accelerate/huggingface_hub (see DESIGN.md).
REQUIREMENTS = {
    "diffusers": "diffusers==0.31.0",
    "peft": "peft==0.13.2",
}
# Nice to have: installed when it fits beside the WebUI's pins, skipped (with one line) when not.
OPTIONAL = {
    "tensorboard": "tensorboard",
}
TAG = "[LoRA Trainer]"


def installed_versions() -> dict:
    out = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        if name:
            out[name.lower().replace("_", "-")] = dist.version
    return out


def constraints_file(versions: dict) -> str:
    """A pip constraints file pinning every installed package to its current version."""
    fd, path = tempfile.mkstemp(prefix="lora_trainer_constraints_", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        for name, version in sorted(versions.items()):
            fh.write(f"{name}=={version}\n")
    return path


def missing_requirements(is_installed, wanted: dict) -> list:
    return [spec for name, spec in wanted.items() if not is_installed(name)]


def install(is_installed, run_pip) -> list:
    """Install what is missing; returns the specs installed (empty when nothing was needed or allowed)."""
    done = install_group(is_installed, run_pip, REQUIREMENTS, required=True)
    return done + install_group(is_installed, run_pip, OPTIONAL, required=False)


def install_group(is_installed, run_pip, wanted: dict, required: bool) -> list:
    todo = missing_requirements(is_installed, wanted)
    if not todo:
        print(f"{TAG} {'requirements' if required else 'optional packages'} present: {', '.join(wanted)}")
        return []
    constraints = constraints_file(installed_versions())
    try:
        dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "-c", constraints, *todo],
                             capture_output=True, text=True)
        if dry.returncode != 0:
            reason = (dry.stderr.strip().splitlines() or ["pip's resolver found no solution"])[-1]
            print(f"{TAG} NOT installing {' '.join(todo)}: it would change a package the WebUI already has ({reason})."
                  + (" Install them by hand at versions that fit." if required else " (optional: training works without)"))
            return []
        for spec in todo:
            print(f"{TAG} installing {spec} (existing packages kept at their versions)")
        run_pip(f"install -c \"{constraints}\" {' '.join(todo)}", f"{TAG} {' '.join(todo)}")
    finally:
        os.unlink(constraints)
    return todo


if __name__ == "__main__":  # the WebUI runs this file as a script with its root on PYTHONPATH
    import launch

    install(launch.is_installed, launch.run_pip)
