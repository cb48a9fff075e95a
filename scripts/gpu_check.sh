#!/usr/bin/env bash
# One command on a CUDA machine (the lent H100 or H200): regenerate the 480x640 .pt2 stand-ins with this machine's
# torch, run the GPU tests (pytest -m gpu), then flashstereo-bench: stock vs GPU-resident, kernels vs
# copy bandwidth, memory over 1000 frames, frames in flight on one and two streams, depth + points cost;
# again with a heavier post stage (HEAVY=0: not).
# Logs and JSON under $OUT.
#   bash scripts/gpu_check.sh            (OUT defaults to /tmp/flashstereo_gpu_check)
# Carried wheels in .whl/ (e.g. opencv-python-headless) are installed to /tmp/site when a module is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flashstereo_gpu_check}
PY=${PYTHON:-python3}
MODELS=${FLASHSTEREO_TEST_MODELS:-/tmp/standin_480x640}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FLASHSTEREO_KERNEL_CACHE=${FLASHSTEREO_KERNEL_CACHE:-/tmp/flashstereo_kernels}

if ! $PY -c "import cv2, yaml" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "wheel install failed"; exit 1; }
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
    $PY -c "import sys, numpy, torch, cv2, cuda.bindings as cb; from flashstereo_ros import kernels; \
print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'cv2', cv2.__version__, \
'cuda-bindings', cb.__version__, 'nvrtc', kernels.nvrtc_version())"
} 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME command...: run, log to $OUT/NAME.log, remember the status
    local name=$1; shift
    local start=$SECONDS
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    STATUS+=("$name: rc=$rc ($((SECONDS - start)) s)")
    return "$rc"
}
STATUS=()
if [ ! -f "$MODELS/feature_runner.pt2" ]; then
    step standin $PY -m flashstereo_ros.standin --out "$MODELS" --formats pt2 --device cuda
fi
export FLASHSTEREO_TEST_MODELS=$MODELS
# one process per test file: a sticky CUDA error (an illegal access poisons the context) stays in its file
for file in $(grep -l "pytest.mark.gpu" test/test_*.py); do
    name=$(basename "$file" .py)
    step "$name" $PY -m pytest -m gpu -q -rsP -p no:cacheprovider "$file"
done
step bench $PY -m flashstereo_ros.tools.bench --feat "$MODELS/feature_runner.pt2" --post "$MODELS/post_runner.pt2" \
    --reps "${FRAMES:-200}" --warmup 10 --kernels --memory-frames 1000 --pipelined --depth-points \
    --json "$OUT/bench.json" --chart "$OUT/bench_stages.png"
BENCHES=(bench)
if [ "${HEAVY:-1}" != 0 ]; then  # HEAVY=0 skips the heavier-post-stage run
    HEAVY_MODELS=${MODELS}_heavy
    if [ ! -f "$HEAVY_MODELS/post_runner.pt2" ]; then
        step standin_heavy $PY -m flashstereo_ros.standin --out "$HEAVY_MODELS" --formats pt2 --device cuda \
            --extra-layers 4
    fi
    step bench_heavy $PY -m flashstereo_ros.tools.bench --feat "$HEAVY_MODELS/feature_runner.pt2" \
        --post "$HEAVY_MODELS/post_runner.pt2" --reps 60 --warmup 5 --pipelined --json "$OUT/bench_heavy.json" \
        --chart "$OUT/bench_heavy.png"
    BENCHES+=(bench_heavy)
fi

echo
echo "=== summary"
printf '%s\n' "${STATUS[@]}"
for log in "$OUT"/test_*.log; do echo "$(basename "$log" .log): $(grep -E "passed|failed|error" "$log" | tail -1)"; done
for name in "${BENCHES[@]}"; do echo "--- $name"; sed -n '/^| config/,$p' "$OUT/$name.log"; done
