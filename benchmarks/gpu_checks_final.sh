#!/usr/bin/env bash
# Third GPU pass: captioning memory test (warm-up run, then measured run); batch 8 trainer vs reference
# (no gradient checkpointing), and the trainer with channels_last.
set -uo pipefail
out=$(realpath -m "${1:-gpu_results}"); mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 80 python3 -m pytest tests/test_caption.py -q -p no:cacheprovider -rs -k cuda --tb=short 2>&1 \
  | grep -v "Loading weights\|Writing model" > "$out/caption.txt"; tail -15 "$out/caption.txt"
cd benchmarks
timeout 100 python3 bench_train.py --workloads sd15-512-b8 --warmup 5 --steps 20 --json "$out/bench_b8.json" 2>&1 \
  | grep -v Warning | tail -4
timeout 60 python3 bench_train.py --workloads sd15-512-b8 --loops trainer --channels-last --warmup 5 --steps 20 \
  --json "$out/bench_b8_cl.json" 2>&1 | grep -v Warning | tail -3
