#!/usr/bin/env bash
# One command on a GPU machine for the cuda backend: build the extension with its CUDA kernels,
# run the GPU tests, run the kernels once under compute-sanitizer (memcheck, racecheck), and
# benchmark them. Every step logs to OUT/<step>.log; later steps run even when an earlier one
# fails (except after a failed build), and the exit status is non-zero if any step failed.
#
#   scripts/gpu_check.sh OUT_DIR            # e.g. scripts/gpu_check.sh benchmarks/results/gpu_csr
#   PYTHON=/path/to/python MAX_JOBS=16 BENCH_ARGS="--ms 128" scripts/gpu_check.sh OUT_DIR
set -uo pipefail

OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:-}
declare -a SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record the status
  local name=$1
  shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-12s rc=%-3s %5ss' "$name" "$rc" "$((SECONDS - t0))")")
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

find_sanitizer() {
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

step env bash -c "nvidia-smi; nvcc --version; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; git rev-parse HEAD"

if step build env MAX_JOBS="${MAX_JOBS:-8}" "$PY" -m pip install --no-build-isolation --no-deps -v -e .; then
  step backends "$PY" -c "
import spd_kernels as sk
from spd_kernels import _ext
print('build_info', _ext.build_info())
print('backends', sk.available_backends())
assert _ext.build_info().get('cuda'), 'extension built without CUDA'
assert sk.available_backends()['cuda'] == [], sk.available_backends()['cuda']
"
  step gpu_tests "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_gpu.py \
    tests/kernels/test_cuda_backend.py tests/kernels/test_products.py tests/kernels/test_cuda_sources.py
  if SAN=$(find_sanitizer); then
    # No caching allocator: every tensor is its own cudaMalloc, so out-of-bounds accesses that
    # would land inside a cached block are caught.
    step memcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck --error-exitcode 9 \
      --target-processes all "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_gpu.py -k smoke
    step racecheck "$SAN" --tool racecheck --error-exitcode 9 --target-processes all \
      "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_gpu.py -k "smoke and float32"
  else
    echo "compute-sanitizer not found (PATH, CUDA_HOME/bin, /usr/local/cuda/bin)" | tee "$OUT/memcheck.log"
    SUMMARY+=("memcheck     skipped: compute-sanitizer not found")
    FAILED=1
  fi
  # shellcheck disable=SC2086
  step bench "$PY" benchmarks/gpu_csr_bench.py --out "$OUT" $BENCH_ARGS
fi

echo "=== summary (logs and results in $OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit "$FAILED"
