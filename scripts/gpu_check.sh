#!/usr/bin/env bash
# The one prepared GPU check (fits in 8 minutes on one H100/H200): GPU tests, kernel benchmark, engine benchmark.
#
#   bash scripts/gpu_check.sh              # from the repository root; results under ${OUT:-./gpu_out}
#
# Installs nothing. The machine is bare (torch, triton, transformers present; this working tree copied, not
# installed), so a symlink shim makes `adaptive_think.kernels` resolve to ./kernels the way pyproject maps it.
# Each step has its own timeout and its exit code is recorded; a failed step does not stop the next one.
# Writes $OUT/gpu_check.json (versions, steps, codes, seconds); exits 1 if any step failed. Without CUDA it says
# so, writes {"skipped": true, ...} and exits 0. Everything lands flat in $OUT, 7 files at most: gpu_check.json,
# pytest_gpu.{log,xml}, bench_kernels.log, kernels.json, bench_engines.log, engines.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"  # whole run; the engine step gets what is left
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # the GPU machine has python3 only
# --- shim: $SHIM/adaptive_think mirrors ./adaptive_think with kernels -> ./kernels (no pip install) ---------
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
STEPS_FILE="$SHIM/steps"  # scratch outside $OUT: only results come back
: > "$STEPS_FILE"
mkdir -p "$SHIM/adaptive_think"
for entry in "$ROOT"/adaptive_think/*; do
    ln -s "$entry" "$SHIM/adaptive_think/$(basename "$entry")"
done
ln -s "$ROOT/kernels" "$SHIM/adaptive_think/kernels"
# benchmarks/ too: with PYTHONSAFEPATH a script's own folder is not on sys.path (they import bench_env)
export PYTHONPATH="$SHIM:$ROOT:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1  # keep the shim and the tree free of stray caches
# `python -c` / `-m` would put the cwd (this root, whose adaptive_think/ has no kernels/) before the shim
export PYTHONSAFEPATH=1
if ! "$PY" -c "import adaptive_think.kernels.controller_step.triton_kernel, adaptive_think.kernels.logit_stats" 2>"$OUT/import_error.txt"; then
    echo "gpu_check: cannot import adaptive_think.kernels through the shim (see $OUT/import_error.txt)" >&2
    exit 2
fi
rm -f "$OUT/import_error.txt"

# --- no CUDA: nothing to check here ------------------------------------------------------------------------
# GPU_CHECK_DRY_RUN=1 walks the GPU path on a CPU machine (tests and benchmark skip), to test this script
if [[ "${GPU_CHECK_DRY_RUN:-0}" != 1 ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "gpu_check: no CUDA device on this machine; GPU tests and benchmarks skipped."
    "$PY" - "$OUT/gpu_check.json" <<'EOF'
import json, sys
doc = {"skipped": True, "reason": "no CUDA device"}
open(sys.argv[1], "w").write(json.dumps(doc) + "\n")
print(json.dumps(doc))
EOF
    exit 0
fi

# run_step NAME TIMEOUT_S CMD...: run with a hard timeout, record "name rc seconds", never abort the script
run_step() {
    local name="$1" limit="$2" start=$SECONDS rc=0
    shift 2
    echo "=== [$name] timeout ${limit}s: $*"
    if timeout -k 10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1; then rc=0; else rc=$?; fi
    echo "=== [$name] exit $rc after $((SECONDS - start))s"
    echo "$name $rc $((SECONDS - start))" >> "$STEPS_FILE"
}

VERSIONS="$("$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")"
echo "$VERSIONS"
export VERSIONS

# 1. GPU tests (all of tests/ marked gpu: kernels, engines)
run_step pytest_gpu 270 "$PY" -m pytest tests -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"

# 2. kernel benchmark
run_step bench_kernels 90 "$PY" benchmarks/gpu_kernels.py --out "$OUT/kernels.json"

# ============================== HOOK: engine benchmarks (benchmarks/gpu_engines.py) ==============================
# Another engineer's benchmark; skipped when missing. It gets the rest of the budget (at least 60 s).
if [[ -f benchmarks/gpu_engines.py ]]; then
    left=$((BUDGET_S - SECONDS))
    (( left < 60 )) && left=60
    # the script stops starting cases at --budget-s and writes its JSON; keep 30 s for that inside the timeout
    run_step bench_engines "$left" "$PY" benchmarks/gpu_engines.py --budget-s "$((left - 30))" --out "$OUT/engines.json"
else
    echo "=== [bench_engines] benchmarks/gpu_engines.py not found: skipped"
    echo "bench_engines skipped 0" >> "$STEPS_FILE"
fi
# ============================== END HOOK =========================================================================

"$PY" - "$STEPS_FILE" "$OUT/gpu_check.json" <<'EOF'
import json, sys
steps = []
for line in open(sys.argv[1]):
    name, rc, secs = line.split()
    steps.append({"step": name, "exit": rc if rc == "skipped" else int(rc), "seconds": int(secs),
                  "timed_out": rc in ("124", "137")})
failed = [s["step"] for s in steps if s["exit"] not in (0, "skipped")]
import os
doc = {"skipped": False, "versions": os.environ.get("VERSIONS"), "steps": steps, "failed": failed}
open(sys.argv[2], "w").write(json.dumps(doc, indent=2) + "\n")
print(json.dumps(doc))
sys.exit(1 if failed else 0)
EOF
