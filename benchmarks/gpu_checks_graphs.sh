#!/usr/bin/env bash
# GPU pass for the fast step paths: graphed-vs-eager, upcast-free and half-precision-norm tests, then
# reference / trainer-eager (cuda_graphs: false) / trainer-fp32-norms (half_precision_norms: false) /
# trainer (defaults: CUDA graphs + channels-last + bf16 norms) at 512 px batch 1 and 8.
# Usage: benchmarks/gpu_checks_graphs.sh OUT_DIR
# (benchmarks/profile_step.py shows where an eager step's GPU time goes.)
set -uo pipefail
out=$(realpath -m "${1:-gpu_results}"); mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, diffusers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)" | tee -a "$out/gpu.txt"
echo "== fast paths vs eager (tiny model)"
timeout 90 python3 -m pytest tests/test_fast_paths.py tests/test_half_norms.py -q -p no:cacheprovider -rs --tb=short -W ignore::UserWarning 2>&1 \
  | tail -8 | tee "$out/test.txt"
cd benchmarks
echo "== training benchmark"
timeout 220 python3 bench_train.py --workloads sd15-512-b1 sd15-512-b8 \
  --loops reference trainer-eager trainer-fp32-norms trainer --warmup 5 --steps 20 --json "$out/bench.json" 2>&1 | grep -v Warning \
  | tee "$out/bench.txt" | tail -16
echo "== SDXL 1024 px, batch 1 (defaults: gradient checkpointing, eager)"
timeout 240 python3 bench_train.py --workloads sdxl-1024-b1 --loops reference trainer --warmup 2 --steps 6 \
  --json "$out/bench_sdxl.json" 2>&1 | grep -v Warning | tee "$out/bench_sdxl.txt" | tail -5
