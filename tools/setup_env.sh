#!/usr/bin/env bash
# Create (or update) a virtual env with one of the supported stacks.
#   tools/setup_env.sh VENV_DIR current|webui [test]
# torch is installed first from the pinned CPU release so that nothing pulls a multi-GB CUDA build.
set -euo pipefail
venv=${1:?venv dir}; stack=${2:?current or webui}; extra=${3:-}
root="$(cd "$(dirname "$0")/.." && pwd)"
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip >/dev/null 2>&1 || true
$venv/bin/python -c "import torch" 2>/dev/null || $pip install -q "torch==$TORCH_VERSION"
constraint=$(mktemp)
echo "torch==$($venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')" > "$constraint"
$pip install -q -c "$constraint" -r "$root/requirements/$stack.txt"
if [ "$extra" = "test" ]; then
  $pip install -q -c "$constraint" -r "$root/requirements/test.txt"
  $pip install -q --no-deps stable-diffusion-sdkit==2.1.5
fi
$pip install -q --no-deps -e "$root"
rm -f "$constraint"
echo "ready: $venv ($stack stack)"
