#!/usr/bin/env bash
# Build the probe shipped for the bundled reasoner: collect -> train + calibrate an effort ladder -> install
# -> evaluate on a fresh question seed. About 15 minutes on two idle CPU cores; re-running resumes an
# interrupted collection.
#   bash scripts/train_bundled_probe.sh [work_dir]
set -euo pipefail
WORK=${1:-runs/bundled_probe}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the tiny model runs fastest single-threaded
# questions: seeds 11 and 12 for collection (2,400 questions, hashed into the probe; half of them calibrate).
# Evaluation uses other seeds, and `eval` leaves out any question the probe was collected on (level 1 has
# only 260 distinct questions, so some always repeat).
adaptive-think collect --model bundled --n 1200 --seed 11 --out "$WORK/collect" --batch-size 32
adaptive-think collect --model bundled --n 1200 --seed 12 --out "$WORK/collect" --batch-size 32
# the effort ladder: each rung loses at most epsilon accuracy against full thinking with probability >= 1 - delta
# (Learn-then-Test on the 1,200 calibration questions); "high" keeps the 0.5-point promise and is the default
adaptive-think train-probe --data "$WORK/collect" --out "$WORK/probe" --seed 0 --calib-fraction 0.5 \
  --efforts high:0.005:0.05 medium:0.02:0.1 low:0.05:0.1
cp "$WORK/probe/probe.json" "$WORK/probe/probe.safetensors" adaptive_think/bundled/probe/
adaptive-think eval --model bundled --probe bundled --n 600 --seed 9001 --json "$WORK/eval.json"
