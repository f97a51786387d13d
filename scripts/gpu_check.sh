#!/usr/bin/env bash
# The one prepared GPU check, 6 minutes on a bare H100/H200: what the targets are about first, each stage under
# its own timeout, each stage's JSON in $OUT as soon as the stage ends (a hang or a cut loses only that stage).
#
#   OUT=/some/dir bash scripts/gpu_check.sh        # from anywhere; results in ${OUT:-./gpu_out}
#
# Stages, in order (seconds are the stage timeouts; GPU_CHECK_BUDGET_S, default 350, bounds the whole run):
#   1. pytest_gpu     140  the `gpu` tests of the kernels (tests/kernels) and the engines (tests/test_gpu_*engine.py)
#   2. bench_kernels   70  benchmarks/gpu_kernels.py --quick
#   3. engines_step   rest benchmarks/gpu_engines.py --plan step: Qwen3-0.6B's shape, batch 1 then 32, graph_none,
#                          graph_probe (compiled step) and HF's static-cache compiled generate(), CUDA-event timing
#                          of step replays, alternated repetitions, paired ratios (benchmarks/step_timing.py)
#   4. engines_full   what is left, if at least 60 s: the default engine plan (reasoner end to end, fast cases)
# Files in $OUT (6 at most): gpu_check.json (versions, how the project was imported, per stage: exit code,
# seconds, timed out; rewritten after every stage), gpu_check.log (every stage's output), pytest_gpu.json,
# kernels.json, engines_step.json, engines_full.json. Exit 1 if a stage failed.
#
# Installs nothing from the network. The project is made importable with `pip install --no-deps --no-index
# --no-build-isolation -e .` (setuptools' editable finder maps adaptive_think.kernels.<op> to ./kernels/<op>
# as pyproject says); where that fails, a symlink tree on PYTHONPATH mirrors the same mapping. Without CUDA it
# writes {"skipped": true, ...} and exits 0 (GPU_CHECK_DRY_RUN=1 walks every stage on a CPU machine, small).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
: > "$LOG"
BUDGET_S="${GPU_CHECK_BUDGET_S:-350}"
DRY="${GPU_CHECK_DRY_RUN:-0}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
SCRATCH="$(mktemp -d)"  # outside $OUT: only results come back
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONDONTWRITEBYTECODE=1
say() { echo "$*" | tee -a "$LOG"; }

# --- import the project: editable install, else the symlink tree -----------------------------------------
# imports this tree's package and ops (not another installed copy), from outside the tree
IMPORT_CHECK="import os, sys, adaptive_think.kernels.controller_step.triton_kernel as p, adaptive_think.kernels.logit_stats as l, adaptive_think as a
files = [a.__file__, p.__file__, l.__file__]
print(files)
sys.exit(0 if all(os.path.realpath(f).startswith('$ROOT/') for f in files) else 4)"
HOW=editable
if ! PIP_BREAK_SYSTEM_PACKAGES=1 timeout 120 "$PY" -m pip install --no-deps --no-index --no-build-isolation -q -e . >>"$LOG" 2>&1 \
    || ! (cd "$SCRATCH" && "$PY" -c "$IMPORT_CHECK") >>"$LOG" 2>&1; then
    HOW=symlinks
    SHIM="$SCRATCH/shim"
    mkdir -p "$SHIM/adaptive_think"
    for entry in "$ROOT"/adaptive_think/*; do
        [[ "$(basename "$entry")" == kernels ]] || ln -s "$entry" "$SHIM/adaptive_think/$(basename "$entry")"
    done
    # adaptive_think.kernels: its own __init__ plus one link per op folder of ./kernels (pyproject's package-dir)
    mkdir -p "$SHIM/adaptive_think/kernels"
    ln -s "$ROOT/adaptive_think/kernels/__init__.py" "$SHIM/adaptive_think/kernels/__init__.py"
    for op in "$ROOT"/kernels/*/; do
        ln -s "${op%/}" "$SHIM/adaptive_think/kernels/$(basename "$op")"
    done
    # PYTHONSAFEPATH: `-m pytest` would put this root (whose adaptive_think/ lacks the ops) before the shim;
    # benchmarks/ on the path instead of the script's folder, which PYTHONSAFEPATH leaves out
    export PYTHONPATH="$SHIM:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONSAFEPATH=1
    if ! "$PY" -c "$IMPORT_CHECK" >>"$LOG" 2>&1; then
        say "gpu_check: the project does not import (editable install and symlink tree both failed; see $LOG)"
        exit 2
    fi
fi
say "gpu_check: project imported ($HOW)"

# --- no CUDA: nothing to check here ------------------------------------------------------------------------
if [[ "$DRY" != 1 ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    say "gpu_check: no CUDA device on this machine; GPU tests and benchmarks skipped."
    echo '{"skipped": true, "reason": "no CUDA device"}' > "$OUT/gpu_check.json"
    exit 0
fi
VERSIONS="$("$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" 2>>"$LOG")"
say "$VERSIONS"
export VERSIONS HOW
STEPS_FILE="$SCRATCH/steps"
: > "$STEPS_FILE"

# summary: gpu_check.json from the stages so far (atomic: written beside, then moved)
summarise() {
    "$PY" - "$STEPS_FILE" "$OUT/gpu_check.json" "$BUDGET_S" <<'EOF'
import json, os, sys
steps = []
for line in open(sys.argv[1]):
    name, rc, secs = line.split()
    steps.append({"stage": name, "exit": rc if rc == "skipped" else int(rc), "seconds": int(secs),
                  "timed_out": rc in ("124", "137")})  # 124: interrupted at the limit; 137: killed after it
failed = [s["stage"] for s in steps if s["exit"] not in (0, "skipped")]
doc = {"skipped": False, "versions": os.environ.get("VERSIONS"), "import": os.environ.get("HOW"),
       "budget_s": int(sys.argv[3]), "stages": steps, "failed": failed}
tmp = sys.argv[2] + ".tmp"
open(tmp, "w").write(json.dumps(doc, indent=2) + "\n")
os.replace(tmp, sys.argv[2])
EOF
}

# stage NAME TIMEOUT_S CMD...: a hard timeout, output into the log, never aborts. SIGINT first: pytest then
# writes its report of the tests so far and gpu_engines.py its JSON; SIGKILL 10 s later if that hangs too
stage() {
    local name="$1" limit="$2" start=$SECONDS rc=0
    shift 2
    say "=== [$name] timeout ${limit}s: $*"
    timeout -s INT -k 10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
    say "=== [$name] exit $rc after $((SECONDS - start))s"
    echo "$name $rc $((SECONDS - start))" >> "$STEPS_FILE"
    summarise
}
left() { echo $((BUDGET_S - SECONDS)); }

# 1. gpu tests of the kernels and the engines; junit -> pytest_gpu.json
GPU_TESTS=(tests/kernels tests/test_gpu_graph_engine.py tests/test_gpu_hf_engine.py)
stage pytest_gpu 140 "$PY" -m pytest "${GPU_TESTS[@]}" -m gpu -q -p no:cacheprovider -o addopts="" -rfE \
    --junitxml="$SCRATCH/pytest.xml"
"$PY" - "$SCRATCH/pytest.xml" "$OUT/pytest_gpu.json" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
doc = {"stage": "pytest_gpu", "complete": os.path.exists(sys.argv[1])}
if doc["complete"]:
    cases = []
    for case in ET.parse(sys.argv[1]).iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "seconds": float(case.get("time", 0)),
                      "outcome": bad[0].tag if bad else "passed",
                      "message": (bad[0].get("message") or "")[:400] if bad else None})
    doc["counts"] = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
    doc["failed"] = [c for c in cases if c["outcome"] in ("failure", "error")]
    doc["skipped"] = [c["test"] for c in cases if c["outcome"] == "skipped"][:20]
    doc["slowest"] = sorted(cases, key=lambda c: -c["seconds"])[:8]
else:
    doc["why"] = "no junit report: the stage crashed or ignored its interrupt (see gpu_check.log)"
open(sys.argv[2], "w").write(json.dumps(doc, indent=2) + "\n")
EOF

# 2. kernel benchmark (its own JSON, written by the script)
stage bench_kernels 70 "$PY" benchmarks/gpu_kernels.py --quick --out "$OUT/kernels.json"

# 3. the compiled engine step: the JSON is rewritten after each batch, so a cut keeps batch 1
STEP_ARGS=(--plan step --out "$OUT/engines_step.json")
if [[ "$DRY" == 1 ]]; then  # CPU walk-through: a small model shape, one batch, few steps
    STEP_ARGS+=(--device cpu --threads 1 --clock cpu --models qwen3-tiny --batches 1 --step-steps 8)
fi
t=$(left)
(( t < 60 )) && t=60
stage engines_step "$t" "$PY" benchmarks/gpu_engines.py "${STEP_ARGS[@]}" --budget-s $((t - 25)) \
    --compile-limit-s 100 --case-limit-s 60

# 4. the default engine plan with what is left (reasoner end to end, uncompiled cases, context, mixed)
t=$(left)
if (( t >= 60 )) && [[ "$DRY" != 1 ]]; then
    stage engines_full "$t" "$PY" benchmarks/gpu_engines.py --models reasoner qwen3-0.6b --step-models --budget-s $((t - 25)) \
        --out "$OUT/engines_full.json"
else
    say "=== [engines_full] skipped: ${t}s left (or a dry run)"
    echo "engines_full skipped 0" >> "$STEPS_FILE"
    summarise
fi

"$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d)); sys.exit(1 if d['failed'] else 0)" \
    "$OUT/gpu_check.json" | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
