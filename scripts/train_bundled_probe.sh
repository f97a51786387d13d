#!/usr/bin/env bash
# Build the probe shipped for the bundled reasoner (docs/reasoner.md): trained and calibrated on `last_digit` and
# `long_chain`, with `walk` held out (the reasoner answers it, the probe never sees it), installed into
# adaptive_think/bundled/probe, then evaluated per family on fresh question seeds, greedy and sampled, with and
# without the out-of-distribution guard, and a transfer table (a probe trained on one family, on every family).
# About 135 minutes of collection on two CPU cores (two collections side by side, 17 minutes a pair of 400 long_chain
# questions), 10 minutes of training and refitting the guards, about 80 of evaluation. Re-running resumes an
# interrupted collection.
#   bash scripts/train_bundled_probe.sh [work_dir]
#   MODEL=DIR bash scripts/train_bundled_probe.sh [work_dir]   # a reasoner of the same recipe: nothing is installed
#   EVAL_ONLY=1 bash scripts/train_bundled_probe.sh [work_dir]  # evaluate WORK/probe{,-last_digit,-long_chain} only
# SEEDS="S1 S2" picks the two evaluation question seeds (use seeds nobody has looked at for figures you report);
# TRANSFER_SEED (default 20261215) the transfer table's.
set -euo pipefail
WORK=${1:-runs/bundled_probe}
MODEL=${MODEL:-bundled}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the tiny model runs fastest single-threaded
SAMPLE=(--do-sample --temperature 0.6 --top-p 0.95 --sampling-seed 1)  # Qwen3's thinking-mode settings
# long_chain thinks for 500-1,000 tokens (up to ~2,000): the budget must hold a whole thought and its answer.
LONG=(--families long_chain --max-new-tokens 2200 --batch-size 32)
# The ready head with memory reads every thought token's state: keep them for the probe's layer only (the layer
# sweep picks the last of the reasoner's four; TOKEN_LAYERS=auto runs a layer pass instead).
TS=(--model "$MODEL" --token-states --token-layers "${TOKEN_LAYERS:-3}")
mkdir -p "$WORK/eval"
if [ -z "${EVAL_ONLY:-}" ]; then  # EVAL_ONLY=1: evaluate the probes already in WORK, build nothing
  # long_chain, greedy and sampled, split by question (--calib-fraction 0.5): half of each collection trains the
  # ready head, the other half calibrates it. Seeds 11 and 12 keep a checkpoint every 16 thought tokens; the rest
  # keep step boundaries only (--every 0: where a calibrated rung stops, and the only labels the head is fitted on),
  # with every thought token's state. Each family is a stratum (--strata category), so every rung must keep its
  # promise on long_chain alone: the strict rung needs a thousand or more of its questions per decoding, and the
  # head with memory keeps improving with more thoughts. A sampling call takes thresholds tested under sampling.
  adaptive-think collect "${TS[@]}" "${LONG[@]}" --every 16 --n 320 --seed 11 --out "$WORK/long-s11" & pid=$!
  adaptive-think collect "${TS[@]}" "${LONG[@]}" --every 16 --n 320 --seed 12 --out "$WORK/long-s12"
  wait "$pid"  # fails the script if the background job failed
  for pair in "13 15" "14 16" "17 18" "19 20" "21 22"; do
    read -r G S <<< "$pair"
    adaptive-think collect "${TS[@]}" "${LONG[@]}" --every 0 --n 400 --seed "$G" --out "$WORK/long-s$G" & pid=$!
    adaptive-think collect "${TS[@]}" "${LONG[@]}" --every 0 --n 400 --seed "$S" "${SAMPLE[@]}" \
      --out "$WORK/long-s$S-sampled"
    wait "$pid"
  done
  # last_digit: seed 11 split as above, and calibration-only collections greedy (seed 13) and sampled (seed 15).
  adaptive-think collect "${TS[@]}" --families last_digit --n 1200 --seed 11 --out "$WORK/ld-s11" & pid=$!
  adaptive-think collect "${TS[@]}" --families last_digit --every 0 --n 1200 --seed 13 --out "$WORK/calib-ld-s13"
  wait "$pid"
  adaptive-think collect "${TS[@]}" --families last_digit --every 0 --n 1200 --seed 15 "${SAMPLE[@]}" \
    --out "$WORK/calib-ld-s15-sampled"
  # long_chain, sampled, calibration only (seeds 23-26, 500 each): a strict rung's test needs thousands of
  # questions to accept a loss rate near its epsilon, and sampled decoding has fewer than greedy in the split above.
  for pair in "23 24" "25 26"; do
    read -r A B <<< "$pair"
    adaptive-think collect "${TS[@]}" "${LONG[@]}" --every 0 --n 500 --seed "$A" "${SAMPLE[@]}" \
      --out "$WORK/calib-long-s$A-sampled" & pid=$!
    adaptive-think collect "${TS[@]}" "${LONG[@]}" --every 0 --n 500 --seed "$B" "${SAMPLE[@]}" \
      --out "$WORK/calib-long-s$B-sampled"
    wait "$pid"
  done
  # The ready head is fitted at step boundaries only (--ready-at-boundaries), where a calibrated rung stops, and
  # reads a running maximum of 8 learned features of the thought so far (--memory 8) and 4 running counts
  # (--memory-counts 4: how many passes a long thought has made), trained in steps of 32 thoughts (--memory-batch
  # 32, 30 epochs at lr 1e-3: the strict rung needs a head that is sure where it fires). The threshold path is priced
  # per family (the default --path-cost per-stratum), as the stratified test sees it. --skip-share 0: no-think
  # answers are rarely right on long_chain, so a skip leg first on the path only spends the rung's tests before any
  # ready step is tried. --per-rung-delta: each rung keeps its own promise (lose at most epsilon with probability at
  # least 0.9) under each decoding. The guard is fitted from the same collections' prompt-end states (alpha 0.03
  # in each family, --strata category).
  PROBE_FLAGS=(--seed 0 --calib-fraction 0.5 --efforts high:0.005:0.1 medium:0.02:0.1 low:0.05:0.1 --per-rung-delta
    --skip-share 0 --neg-weight 4 --ready-at-boundaries --strata category --memory 8 --memory-counts 4
    --memory-batch 32 --memory-epochs 30 --memory-lr 1e-3)
  LONG_DATA=("$WORK"/long-s{11,12,13,14,17,19,21} "$WORK"/long-s{15,16,18,20,22}-sampled)
  # --route category: each family gets thresholds of its own, so last_digit's early stops no longer set
  # long_chain's (docs/training.md, "Thresholds per group"); a route places each row by its prompt-end state.
  # --patience greedy=1,sampled=2: a sampled stop waits for a second boundary over the threshold, since the head
  # fires a step early there (docs/training.md, "Waiting one step").
  adaptive-think train-probe --data "${LONG_DATA[@]}" "$WORK/ld-s11" \
    --calib-data "$WORK/calib-ld-s13" "$WORK/calib-ld-s15-sampled" "$WORK"/calib-long-s{23,24,25,26}-sampled \
    --out "$WORK/probe" --max-memory 6 "${PROBE_FLAGS[@]}" --route category --patience greedy=1,sampled=2
  # For the transfer table: the same recipe on one family's first collections alone (long_chain: training on seeds
  # 11 and 12, calibration on 13-16).
  adaptive-think train-probe --data "$WORK/ld-s11" --calib-data "$WORK/calib-ld-s13" "$WORK/calib-ld-s15-sampled" \
    --out "$WORK/probe-last_digit" "${PROBE_FLAGS[@]}"
  adaptive-think train-probe --data "$WORK/long-s11" "$WORK/long-s12" --calib-data "$WORK"/long-s{13,14} \
    "$WORK"/long-s{15,16}-sampled --out "$WORK/probe-long_chain" "${PROBE_FLAGS[@]}"
  # The guard train-probe fits reads only the training split's prompts (a few hundred), too few for the spread of
  # long_chain's prompts: it lets most walk prompts through (benchmarks/guard_fit_sweep.py). Refit it on 2,000
  # prompts of each family (one prefill each), threshold per family (alpha 0.03). The shipped probe's guard is rank
  # 128: on `walk` its probe without a guard loses half the questions, so the guard must catch nearly every prompt
  # (rank 64 flags 96%, rank 128 all of 400; benchmarks/guard_fit_sweep.py). The one-family probes' are rank 64.
  GUARD=(--model "$MODEL" --seed 21 --strata category --alpha 0.03)
  adaptive-think fit-guard "${GUARD[@]}" --rank 128 --families last_digit long_chain --n 4000 --probe "$WORK/probe" \
    --out "$WORK/probe"
  adaptive-think fit-guard "${GUARD[@]}" --rank 64 --families last_digit --n 2000 --probe "$WORK/probe-last_digit" \
    --out "$WORK/probe-last_digit"
  adaptive-think fit-guard "${GUARD[@]}" --rank 64 --families long_chain --n 2000 --probe "$WORK/probe-long_chain" \
    --out "$WORK/probe-long_chain"
  if [ "$MODEL" = bundled ]; then
    cp "$WORK/probe/probe.json" "$WORK/probe/probe.safetensors" adaptive_think/bundled/probe/
  fi
fi
# Fresh seeds: in distribution (long_chain on two seeds, last_digit) and held out (walk), greedy and sampled.
# Every question the probe was collected on is left out.
read -r S1 S2 <<< "${SEEDS:-20261218 20261219}"
RUNGS=(full effort:high effort:medium effort:low effort:medium+noguard oracle)
HELD=(full effort:high effort:medium effort:low effort:high+noguard effort:medium+noguard effort:low+noguard oracle)
EV=(adaptive-think eval --model "$MODEL" --probe "$WORK/probe")
for S in $S1 $S2; do
  "${EV[@]}" --families long_chain --n 120 --seed "$S" --max-new-tokens 2200 --policies "${RUNGS[@]}" \
    --json "$WORK/eval/long-greedy-s$S.json" & pid=$!
  "${EV[@]}" --families long_chain --n 120 --seed "$S" --max-new-tokens 2200 --policies "${RUNGS[@]}" "${SAMPLE[@]}" \
    --json "$WORK/eval/long-sampled-s$S.json"
  wait "$pid"
done
"${EV[@]}" --families walk --n 600 --seed "$S1" --max-new-tokens 512 --policies "${HELD[@]}" \
  --json "$WORK/eval/walk-greedy-s$S1.json" & pid=$!
"${EV[@]}" --families last_digit --n 600 --seed "$S1" --max-new-tokens 512 --policies "${RUNGS[@]}" \
  --json "$WORK/eval/ld-greedy-s$S1.json"
wait "$pid"
"${EV[@]}" --families walk --n 600 --seed "$S1" --max-new-tokens 512 --policies "${HELD[@]}" "${SAMPLE[@]}" \
  --json "$WORK/eval/walk-sampled-s$S1.json" & pid=$!
"${EV[@]}" --families last_digit --n 600 --seed "$S1" --max-new-tokens 512 --policies "${RUNGS[@]}" "${SAMPLE[@]}" \
  --json "$WORK/eval/ld-sampled-s$S1.json"
wait "$pid"
# The transfer table: each probe (one family, and the shipped one) on every family, guard on and off.
TRANSFER=(--families last_digit walk long_chain --n 180 --seed "${TRANSFER_SEED:-20261215}" --max-new-tokens 2200
  --policies full effort:high effort:high+noguard oracle)
pids=()
for P in probe-last_digit probe-long_chain probe; do
  adaptive-think eval --model "$MODEL" --probe "$WORK/$P" "${TRANSFER[@]}" --json "$WORK/eval/transfer-$P.json" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for R in effort:high effort:high+noguard; do
  python scripts/transfer_table.py "$WORK/eval/transfer-probe-last_digit.json" \
    "$WORK/eval/transfer-probe-long_chain.json" "$WORK/eval/transfer-probe.json" --rung "$R" --out "$WORK/eval/transfer-${R//[:+]/-}.json"
done
