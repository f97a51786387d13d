#!/usr/bin/env bash
# Build the probe shipped for the bundled reasoner: collect -> train + calibrate -> install -> eval.
# About 10 minutes on two CPU cores. Re-running resumes an interrupted collection.
#   bash scripts/train_bundled_probe.sh [work_dir]
set -euo pipefail
WORK=${1:-runs/bundled_probe}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the tiny model runs fastest single-threaded
# questions: seed 11 for collection (training seeds of the reasoner are disjoint), seed 2024 for eval
adaptive-think collect --model bundled --n 1200 --seed 11 --out "$WORK/collect" --batch-size 32
adaptive-think train-probe --data "$WORK/collect" --out "$WORK/probe" --epsilon 0.02 --delta 0.1 --seed 0
cp "$WORK/probe/probe.json" "$WORK/probe/probe.safetensors" adaptive_think/bundled/probe/
adaptive-think eval --model bundled --probe bundled --n 600 --seed 2024 --json "$WORK/eval.json"
