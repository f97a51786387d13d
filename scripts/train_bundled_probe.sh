#!/usr/bin/env bash
# Build the probe shipped for the bundled reasoner: collect -> train + calibrate -> install -> eval.
# About 10 minutes on two CPU cores. Re-running resumes an interrupted collection.
#   bash scripts/train_bundled_probe.sh [work_dir]
set -euo pipefail
WORK=${1:-runs/bundled_probe}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the tiny model runs fastest single-threaded
# questions: seeds 11 and 12 for collection (2,400 questions; 35% of them calibrate), seed 2024 for eval
adaptive-think collect --model bundled --n 1200 --seed 11 --out "$WORK/collect" --batch-size 32
adaptive-think collect --model bundled --n 1200 --seed 12 --out "$WORK/collect" --batch-size 32
# epsilon 0.015: at most 1.5 points of accuracy lost against full thinking, with probability >= 0.9
adaptive-think train-probe --data "$WORK/collect" --out "$WORK/probe" --epsilon 0.015 --delta 0.1 --seed 0
cp "$WORK/probe/probe.json" "$WORK/probe/probe.safetensors" adaptive_think/bundled/probe/
adaptive-think eval --model bundled --probe bundled --n 600 --seed 2024 --json "$WORK/eval.json"
