#!/usr/bin/env bash
# Build the probe shipped for the one-family reasoner (bundled-v1): collect (greedy and sampled) -> train + calibrate an
# effort ladder under both decodings -> install -> evaluate on a fresh question seed. About two hours on two
# idle CPU cores (run the greedy and the sampled collections side by side); re-running resumes an interrupted
# collection.
#   bash scripts/train_bundled_v1_probe.sh [work_dir]
set -euo pipefail
WORK=${1:-runs/bundled_v1_probe}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the tiny model runs fastest single-threaded
SAMPLE=(--do-sample --temperature 0.6 --top-p 0.95 --sampling-seed 1)  # Qwen3's thinking-mode settings
# Questions: seeds 11 and 12 (all levels) and 13 and 14 (levels 2-6 only: level 1 has just 260 distinct
# questions, and leaving it out of the newer draws keeps about a fifth of them unseen for `eval`). Every
# question is hashed into the probe; `eval` leaves out the ones it has seen. --token-states keeps every
# thought token's state: the ready head has memory (--memory below), which trains on whole thoughts.
# Greedy: every 8th thought token and every step boundary is a checkpoint (training and calibration).
adaptive-think collect --model bundled-v1 --n 1200 --seed 11 --token-states --out "$WORK/greedy"
adaptive-think collect --model bundled-v1 --n 1200 --seed 12 --token-states --out "$WORK/greedy"
adaptive-think collect --model bundled-v1 --n 2400 --seed 13 --levels 2 3 4 5 6 --token-states --out "$WORK/greedy-L2-6"
adaptive-think collect --model bundled-v1 --n 2400 --seed 14 --levels 2 3 4 5 6 --token-states --out "$WORK/greedy-L2-6"
# Sampled: the same questions, thoughts and forced-exit answers sampled; step boundaries only (where the
# calibrated policy stops), so every rung is tested under sampling too.
adaptive-think collect --model bundled-v1 --n 1200 --seed 11 --every 0 "${SAMPLE[@]}" --token-states --out "$WORK/sampled"
adaptive-think collect --model bundled-v1 --n 1200 --seed 12 --every 0 "${SAMPLE[@]}" --token-states --out "$WORK/sampled"
adaptive-think collect --model bundled-v1 --n 2400 --seed 13 --levels 2 3 4 5 6 --every 0 "${SAMPLE[@]}" --token-states --out "$WORK/sampled-L2-6"
adaptive-think collect --model bundled-v1 --n 2400 --seed 14 --levels 2 3 4 5 6 --every 0 "${SAMPLE[@]}" --token-states --out "$WORK/sampled-L2-6"
# The effort ladder: each rung loses at most epsilon accuracy against full thinking with probability >= 1 - delta,
# under greedy decoding and under sampling (Learn-then-Test on each decoding's calibration questions);
# "high" keeps the 0.5-point promise and is the default. Each rung spends a quarter of its budget on skipping
# first (--skip-share), so that easy questions skip thinking outright. The ready head's loss weighs a wrong
# checkpoint four times a right one (--neg-weight): it is used at high thresholds. --memory 8: the ready head
# also reads a running maximum of 8 learned features of every earlier thought token (a slip several lines
# back stays visible at the first stated answer).
# Calibration only (the heads never see them): seeds 15 and 16, levels 2-6, greedy and sampled. More
# calibration questions tighten each rung's bound, and these are drawn exactly as new questions are.
adaptive-think collect --model bundled-v1 --n 2400 --seed 15 --levels 2 3 4 5 6 --every 0 --token-states --out "$WORK/calib-greedy-s15"
adaptive-think collect --model bundled-v1 --n 2400 --seed 16 --levels 2 3 4 5 6 --every 0 --token-states --out "$WORK/calib-greedy-s16"
adaptive-think collect --model bundled-v1 --n 2400 --seed 15 --levels 2 3 4 5 6 --every 0 "${SAMPLE[@]}" --token-states --out "$WORK/calib-sampled-s15"
adaptive-think collect --model bundled-v1 --n 2400 --seed 16 --levels 2 3 4 5 6 --every 0 "${SAMPLE[@]}" --token-states --out "$WORK/calib-sampled-s16"
# Family-wise (the default): the 3 rungs x 2 decodings are tested at delta / 6 each, so that every rung holds
# under both decodings at once with probability >= 0.9.
adaptive-think train-probe --data "$WORK/greedy" "$WORK/greedy-L2-6" "$WORK/sampled" "$WORK/sampled-L2-6" \
  --calib-data "$WORK/calib-greedy-s15" "$WORK/calib-greedy-s16" "$WORK/calib-sampled-s15" "$WORK/calib-sampled-s16" \
  --out "$WORK/probe" --seed 0 --calib-fraction 0.5 --efforts high:0.005:0.1 medium:0.02:0.1 low:0.05:0.1 \
  --skip-share 0.25 --neg-weight 4 --memory 8 --strata length:2 --path-cost pooled
cp "$WORK/probe/probe.json" "$WORK/probe/probe.safetensors" adaptive_think/bundled/v1/probe/
adaptive-think eval --model bundled-v1 --probe bundled-v1 --n 600 --seed 20261129 --json "$WORK/eval.json"
