#!/usr/bin/env bash
# One prepared command for a machine with a GPU (sized for an H200 with 16 cores, about 5
# minutes): build deta._C with the CUDA kernels in place, run the CUDA tests, the device checks
# of tools/gpu/msda_check.py, and the batch-4 inference FPS of DETA R-50 (random weights,
# 800x1201) in fp32, fp16 and bf16 autocast against the official 12.7 FPS (V100, fp32).
#
#   bash tools/gpu_check.sh            # from anywhere; logs and JSON under ${OUT:-output/gpu_check}
#
# Every step has its own timeout and log; a failed step does not stop the later ones, and the
# exit status is non-zero if any step failed. Nothing is downloaded: a missing package is named
# and the steps that need it are skipped (the device machine may be offline). Environment:
# PYTHON (default: .venv/bin/python if it has torch, else python3), TORCH_CUDA_ARCH_LIST (9.0),
# MAX_JOBS (16), SKIP_BUILD=1 (reuse a CUDA deta._C), ITERS (20) and WARMUP (5) of the benchmark,
# BUDGET_S (540: every step's timeout is cut to what is left of it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-output/gpu_check}"
mkdir -p "$OUT_DIR"
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
        PYTHON=.venv/bin/python
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OFFICIAL_FPS=12.7
BUDGET_S="${BUDGET_S:-540}"
declare -a SUMMARY=()
FAILED=0

note() { echo "[gpu_check] $*"; }

# step NAME TIMEOUT_S CMD...: runs CMD with its own timeout (cut to what is left of BUDGET_S,
# so the summary is printed before an outer limit), output to $OUT_DIR/NAME.log.
step() {
    local name="$1" limit="$2"
    shift 2
    local log="$OUT_DIR/$name.log" start=$SECONDS rc left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 30 ]; then
        skip "$name" "out of time: BUDGET_S=$BUDGET_S"
        FAILED=1
        return 1
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    note "== $name (timeout ${limit}s, log $log)"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    local took=$((SECONDS - start)) status="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="TIMEOUT after ${limit}s"
    elif [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"
    fi
    [ "$status" = ok ] || FAILED=1
    SUMMARY+=("$name: $status, ${took}s")
    note "$name: $status in ${took}s; last lines:"
    tail -n "${TAIL_LINES:-15}" "$log" | sed 's/^/    /'
    return "$rc"
}

skip() {
    SUMMARY+=("$1: SKIPPED ($2)")
    note "$1: SKIPPED ($2)"
}

finish() {
    note "== summary (logs in $OUT_DIR)"
    printf '    %s\n' "${SUMMARY[@]}"
    exit "$FAILED"
}

# ---- 0. What this machine has. Without a CUDA device there is nothing to check: stop here.
note "python: $PYTHON; output: $OUT_DIR"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader | sed 's/^/[gpu_check] gpu: /'
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    note "torch cannot be imported by $PYTHON: install the CUDA build of torch (Makefile pins it)"
    exit 2
fi
"$PYTHON" - >"$OUT_DIR/env.txt" 2>&1 <<'EOF'
import importlib.util, os, shutil
import torch
from torch.utils.cpp_extension import CUDA_HOME

print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
print(f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
print(f"CUDA_HOME: {CUDA_HOME}; nvcc: {nvcc if nvcc and os.path.exists(nvcc) else None}")
print(f"ninja: {shutil.which('ninja')}")
need = ["setuptools", "detectron2", "scipy", "pycocotools", "timm", "fvcore", "pytest"]
print("missing: " + " ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
sed 's/^/[gpu_check] /' "$OUT_DIR/env.txt"
if ! grep -q "^cuda available: True" "$OUT_DIR/env.txt"; then
    if grep -q "built for CUDA None" "$OUT_DIR/env.txt"; then
        note "torch is a CPU-only build: install a CUDA build of torch"
    fi
    note "no CUDA device visible to torch: nothing to check on this machine."
    note "(the CUDA kernels compile without a GPU: make cuda-build-check)"
    exit 2
fi
MISSING="$(sed -n 's/^missing: //p' "$OUT_DIR/env.txt")"
[ -n "$MISSING" ] && note "missing Python packages: $MISSING (pip install -r dev/requirements.txt; \
Detectron2: python dev/install_detectron2.py). The steps that need them are skipped."
has() { case " $MISSING " in *" $1 "*) return 1 ;; esac; }

# ---- 1. Build deta._C with the CUDA kernels in place (replaces a CPU-only build).
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    skip build "SKIP_BUILD=1"
elif ! has setuptools; then
    skip build "setuptools is missing (pip install setuptools)"
    FAILED=1
elif grep -q "nvcc: None" "$OUT_DIR/env.txt"; then
    skip build "no nvcc under CUDA_HOME: set CUDA_HOME to the toolkit root (bin/nvcc, lib64/)"
    FAILED=1
else
    grep -q "^ninja: None" "$OUT_DIR/env.txt" && note "no ninja: the build runs serially (slower)"
    step build 240 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
        MAX_JOBS="${MAX_JOBS:-16}" "$PYTHON" setup.py build_ext --inplace
fi
if ! "$PYTHON" -c "
import sys, types
pkg = types.ModuleType('deta'); pkg.__path__ = ['deta']; sys.modules['deta'] = pkg
import importlib; sys.exit(0 if importlib.import_module('deta._C').has_cuda() else 1)
" 2>/dev/null; then
    note "deta._C is missing or has no CUDA kernels: the checks below cannot run"
    SUMMARY+=("deta._C with CUDA: MISSING")
    FAILED=1
    finish
fi

# ---- 2. The CUDA tests (named test_cuda_*); a skipped one means CUDA was not used: failure.
if has detectron2 && has pytest && has scipy; then
    step cuda_tests 120 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/layers -k cuda
    if grep -q "SKIPPED" "$OUT_DIR/cuda_tests.log"; then
        note "cuda_tests: some CUDA tests were skipped on a CUDA machine (see the log)"
        SUMMARY+=("cuda_tests: SKIPPED TESTS")
        FAILED=1
    fi
else
    skip cuda_tests "needs detectron2, scipy and pytest"
fi

# ---- 3. Device checks beyond the tests (needs torch only).
TAIL_LINES=25 step msda_check 150 "$PYTHON" tools/gpu/msda_check.py

# ---- 4. Batch-4 inference FPS, fp32 and autocast fp16 / bf16, against the official figure.
if has detectron2 && has scipy && has timm && has fvcore && has pycocotools; then
    TAIL_LINES=12 step inference_fps 210 "$PYTHON" tools/benchmark.py inference --device cuda \
        --batch-sizes 4 --dtype fp32 fp16 bf16 --warmup "${WARMUP:-5}" --iters "${ITERS:-20}" \
        --threads "$(nproc)" --json "$OUT_DIR/inference.json"
    # The benchmark exits 0 when a worker fails (the row holds the error): fail on those here.
    if [ -s "$OUT_DIR/inference.json" ] && ! "$PYTHON" - "$OUT_DIR/inference.json" \
        "$OFFICIAL_FPS" >"$OUT_DIR/fps.txt" 2>&1 <<'EOF'; then
import json, sys

data = json.load(open(sys.argv[1]))
official = float(sys.argv[2])
gpu = data["machine"].get("gpu", "?")
errors = 0
for row in data["results"]:
    ours = row["ours"]
    if "error" in ours:
        errors += 1
        print(f"[gpu_check] {row['dtype']}: worker error: {ours['error'].splitlines()[-1]}")
        continue
    fps = row["batch_size"] / ours["forward"]["mean_s"]
    e2e = ours.get("e2e")
    e2e_text = f", end-to-end {row['batch_size'] / e2e['mean_s']:.1f} FPS" if e2e else ""
    print(
        f"[gpu_check] {gpu} batch {row['batch_size']} {row['dtype']}: forward {fps:.1f} FPS "
        f"= {fps / official:.2f}x the official {official} FPS (V100, fp32){e2e_text}, "
        f"peak {ours['forward']['peak_mib']:.0f} MiB"
    )
sys.exit(1 if errors else 0)
EOF
        SUMMARY+=("inference_fps: WORKER ERRORS")
        FAILED=1
    fi
    [ -s "$OUT_DIR/fps.txt" ] && cat "$OUT_DIR/fps.txt"
else
    skip inference_fps "needs detectron2, scipy, timm, fvcore and pycocotools"
fi
finish
