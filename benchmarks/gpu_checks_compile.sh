#!/usr/bin/env bash
# Second GPU pass: the captioning memory test with its full output, and the trainer with torch_compile.
set -uo pipefail
out=$(realpath -m "${1:-gpu_results}"); mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 90 python3 -m pytest tests/test_caption.py -q -p no:cacheprovider -rs -k cuda --tb=long 2>&1 \
  | grep -v "Loading weights\|Writing model" > "$out/caption_full.txt"; tail -40 "$out/caption_full.txt"
cd benchmarks
timeout 170 python3 bench_train.py --workloads sd15-512-b1 sd15-512-b8 --loops trainer --warmup 5 --steps 20 \
  --json "$out/bench_nocompile.json" 2>&1 | grep -v Warning | tail -4
timeout 200 python3 bench_train.py --workloads sd15-512-b1 --loops trainer --warmup 6 --steps 30 --compile \
  --json "$out/bench_compile_b1.json" 2>&1 | grep -v Warning | tail -4
