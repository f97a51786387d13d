#!/usr/bin/env bash
# Build a probe for the multi-family reasoner (docs/reasoner.md, v2): trained and calibrated on `last_digit` and
# `long_chain`, with `walk` held out (the reasoner answers it, the probe never sees it), then evaluated per
# family on fresh question seeds, with and without the out-of-distribution guard. About 40 minutes of collection
# on two CPU cores (two collections side by side), 10 of training, about 45 of evaluation. Re-running
# resumes an interrupted collection. SEEDS="S1 S2" picks the two evaluation question seeds (use seeds nobody has
# looked at for figures you report).
#   bash scripts/train_family_probe.sh MODEL_DIR [work_dir]
set -euo pipefail
MODEL=${1:?usage: bash scripts/train_family_probe.sh MODEL_DIR [work_dir]}
WORK=${2:-runs/family_probe}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the tiny model runs fastest single-threaded
SAMPLE=(--do-sample --temperature 0.6 --top-p 0.95 --sampling-seed 1)  # Qwen3's thinking-mode settings
# long_chain thinks for 500-1,000 tokens (up to ~2,000): the budget must hold a whole thought and its answer.
# A checkpoint every 16 thought tokens keeps the collection linear in the thought's length.
LONG=(--families long_chain --max-new-tokens 2200 --batch-size 32)
# The ready head with memory reads every thought token's state: keep them for the probe's layer only (the layer
# sweep picks the last of the v2 reasoner's four; TOKEN_LAYERS=auto runs a layer pass instead).
TS=(--token-states --token-layers "${TOKEN_LAYERS:-3}")
mkdir -p "$WORK/eval"
# Training (half of it calibration, --calib-fraction 0.5): seeds 11 and 12 of long_chain, seed 11 of last_digit.
adaptive-think collect --model "$MODEL" "${LONG[@]}" --every 16 --n 320 --seed 11 "${TS[@]}" --out "$WORK/long-s11" & pid=$!
adaptive-think collect --model "$MODEL" "${LONG[@]}" --every 16 --n 320 --seed 12 "${TS[@]}" --out "$WORK/long-s12"
adaptive-think collect --model "$MODEL" --families last_digit --n 1200 --seed 11 "${TS[@]}" --out "$WORK/ld-s11"
wait "$pid"  # fails the script if the background job failed
# Calibration only (step boundaries, where a calibrated rung stops): each family is a stratum (--strata
# category), so every rung must keep its promise on long_chain alone, which needs several hundred of its
# questions per rung.
adaptive-think collect --model "$MODEL" "${LONG[@]}" --every 0 --n 400 --seed 13 "${TS[@]}" --out "$WORK/calib-long-s13" & pid=$!
adaptive-think collect --model "$MODEL" "${LONG[@]}" --every 0 --n 400 --seed 14 "${TS[@]}" --out "$WORK/calib-long-s14"
adaptive-think collect --model "$MODEL" --families last_digit --every 0 --n 1200 --seed 13 "${TS[@]}" --out "$WORK/calib-ld-s13"
wait "$pid"
# The ready head is fitted at step boundaries only (--ready-at-boundaries), where a calibrated rung stops, and
# reads a running maximum of 8 learned features of the thought so far (--memory 8) and 4 running counts
# (--memory-counts 4: how many passes a long thought has made), trained in steps of 32 thoughts (--memory-batch
# 32, 30 epochs at lr 1e-3: the strict rung needs a head that is sure where it fires). The threshold path is priced
# per family (the default --path-cost per-stratum), as the stratified test sees it. --skip-share 0: no-think
# answers are rarely right on long_chain, so a skip leg first on the path only spends the rung's tests before any
# ready step is tried. The guard is fitted from the same collections' prompt-end states (alpha 0.03 in each
# family, --strata category).
adaptive-think train-probe --data "$WORK/long-s11" "$WORK/long-s12" "$WORK/ld-s11" \
  --calib-data "$WORK/calib-long-s13" "$WORK/calib-long-s14" "$WORK/calib-ld-s13" --out "$WORK/probe" --seed 0 \
  --calib-fraction 0.5 --efforts high:0.005:0.1 medium:0.02:0.1 low:0.05:0.1 --skip-share 0 --neg-weight 4 \
  --ready-at-boundaries --strata category --memory 8 --memory-counts 4 --memory-batch 32 --memory-epochs 30 \
  --memory-lr 1e-3
# Fresh seeds: in distribution (long_chain on two seeds, last_digit) and held out (walk), greedy and sampled.
read -r S1 S2 <<< "${SEEDS:-20261207 20261208}"
RUNGS=(full effort:high effort:medium effort:low effort:medium+noguard oracle)
HELD=(full effort:high effort:medium effort:low effort:high+noguard effort:medium+noguard effort:low+noguard oracle)
EV=(adaptive-think eval --model "$MODEL" --probe "$WORK/probe")
"${EV[@]}" --families long_chain --n 120 --seed $S1 --max-new-tokens 2200 --policies "${RUNGS[@]}" --json "$WORK/eval/long-g-s1.json" & pid=$!
"${EV[@]}" --families long_chain --n 120 --seed $S2 --max-new-tokens 2200 --policies "${RUNGS[@]}" --json "$WORK/eval/long-g-s2.json"
wait "$pid"
"${EV[@]}" --families walk --n 600 --seed $S1 --max-new-tokens 512 --policies "${HELD[@]}" --json "$WORK/eval/walk-g-s1.json" & pid=$!
"${EV[@]}" --families last_digit --n 600 --seed $S1 --max-new-tokens 512 --policies "${RUNGS[@]}" --json "$WORK/eval/ld-g-s1.json"
wait "$pid"
"${EV[@]}" --families long_chain --n 120 --seed $S1 --max-new-tokens 2200 --policies "${RUNGS[@]}" "${SAMPLE[@]}" --json "$WORK/eval/long-s-s1.json" & pid=$!
"${EV[@]}" --families walk --n 600 --seed $S1 --max-new-tokens 512 --policies "${HELD[@]}" "${SAMPLE[@]}" --json "$WORK/eval/walk-s-s1.json"
wait "$pid"
