#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine (not part of CI): the captioning memory test, the memory
# planner against measured peaks, and the training benchmark (trainer vs. reference loop).
# Usage: benchmarks/gpu_checks.sh OUT_DIR   (needs diffusers/peft importable; see benchmarks/README.md)
set -uo pipefail
out=$(realpath -m "${1:-gpu_results}"); mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
echo "== caption CUDA memory test"
timeout 90 python3 -m pytest tests/test_caption.py -q -p no:cacheprovider -rs -k "cuda or gpu" 2>&1 | tail -5 | tee "$out/caption.txt"
cd benchmarks
echo "== planner vs measured (SD1.5 512 px)"
for b in 1 4; do
  timeout 120 python3 check_plan.py --resolution 512 --batch $b --json "$out/plan_b$b.json" 2>&1 | tail -8
done
echo "== training benchmark"
timeout 210 python3 bench_train.py --workloads sd15-512-b1 sd15-512-b1-ckpt sd15-512-b8 --warmup 5 --steps 20 \
  --json "$out/bench.json" 2>&1 | grep -v Warning | tail -14 | tee "$out/bench.txt"
