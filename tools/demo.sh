#!/usr/bin/env bash
# Set up a virtual env (.venv) and train the built-in demo: a tiny random model on generated images (CPU).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tools/setup_env.sh "$root/.venv" current
"$root/.venv/bin/python" -m lora_trainer demo --output "${1:-demo_output}"
