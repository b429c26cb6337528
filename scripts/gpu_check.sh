#!/usr/bin/env bash
# One prepared check of both GPU backends (triton: block-sparse; cuda: CSR), end to end in about
# 10 minutes on one H100/H200: build for sm_90 with every core, the GPU tests of both backends (a
# selection; --full for the whole grid), compute-sanitizer memcheck on a smoke test of each, and
# both GPU benchmarks on a reduced grid. Every step has a time limit inside an overall budget, so
# later steps still run (and report) when one hangs or fails; the exit status is non-zero if any
# step failed. OUT ends with at most 8 files: summary.txt, logs.tar.gz (every log, the JUnit XML
# and the benchmarks' other outputs) and the benchmarks' main results.
#
#   scripts/gpu_check.sh OUT_DIR              # on the GPU machine (make gpu-check OUT=dir)
#   scripts/gpu_check.sh --full OUT_DIR       # the full test grids (longer than 10 minutes)
#   scripts/gpu_check.sh --dry-run OUT_DIR    # the same steps on a CPU: Triton interpreter,
#                                             # compile-only CUDA, no sanitizer (tests run it)
#   PYTHON=/path/to/python GPU_CHECK_BUDGET_S=570 scripts/gpu_check.sh OUT_DIR
set -uo pipefail

DRY=0
FULL=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --full) FULL=1 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
OUT=${1:?usage: scripts/gpu_check.sh [--dry-run] [--full] OUT_DIR}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOGS="$OUT/logs"
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
JOBS=${MAX_JOBS:-$(nproc)}
BUDGET=${GPU_CHECK_BUDGET_S:-$([ "$FULL" -eq 1 ] && echo 3600 || echo 570)}  # the whole run, seconds; each step also has its own limit
START=$SECONDS
declare -a SUMMARY=()
FAILED=0
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $((BUDGET - (SECONDS - START))); }

step() {  # step NAME LIMIT_S COMMAND...: run under a time limit, log to LOGS/NAME.log, record the status
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(($(left) - 15))  # keep time to pack the results
  if [ "$remaining" -lt 20 ]; then
    SUMMARY+=("$(printf '%-11s skipped: time budget (%ss) spent' "$name" "$BUDGET")")
    FAILED=1
    return 1
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  local note=""
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" (time limit ${limit}s)"
  SUMMARY+=("$(printf '%-11s rc=%-3s %4ss%s' "$name" "$rc" "$((SECONDS - t0))" "$note")")
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

skip() {  # skip NAME WHY
  echo "$2" >"$LOGS/$1.log"
  SUMMARY+=("$(printf '%-11s skipped: %s' "$1" "$2")")
}

find_sanitizer() {
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

compile_cuda_only() {  # the torch-free kernels for sm_90 with setup.py's flags (no GPU, no torch build)
  local flags
  flags=$("$PY" -c "
import ast
tree = ast.parse(open('setup.py').read())
lists = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
         if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '').startswith('NVCC_')}
print(' '.join(lists['NVCC_RELEASE_FLAGS'] + lists['NVCC_FLAGS']))") || return 1
  local pids=() rc=0 src
  for src in csrc/cuda/*.cu; do
    # shellcheck disable=SC2086
    nvcc -c "$src" -o "$LOGS/$(basename "$src" .cu).o" $flags -gencode=arch=compute_90,code=sm_90 \
      -Icsrc -Icsrc/cuda &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  rm -f "$LOGS"/*.o
  [ "$rc" -eq 0 ] && echo "compiled $(ls csrc/cuda/*.cu | wc -l) CUDA sources for sm_90"
  return "$rc"
}
export -f compile_cuda_only
export PY LOGS

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts="" -ra)
TESTS=(tests/kernels/test_triton_gpu.py tests/kernels/test_cuda_gpu.py tests/kernels/test_cuda_backend.py
  tests/kernels/test_metadata_checks.py)
if [ "$FULL" -eq 1 ]; then GRID=full; else GRID=quick; fi
if [ "$DRY" -eq 1 ]; then
  # the Triton kernels of the CPU tests run interpreted; nothing may reach for a device
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi

# ----------------------------------------------------------------------------- the steps
step env 60 bash -c "date -u; git rev-parse HEAD; git status --short | head -20; nproc
command -v nvidia-smi >/dev/null && nvidia-smi || echo 'nvidia-smi: not found'
command -v nvcc >/dev/null && nvcc --version || echo 'nvcc: not found'
$PY -c 'import sys, torch, triton; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__); print(\"device\", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'"

if [ "$DRY" -eq 1 ] && ! command -v nvcc >/dev/null; then
  skip build "dry run without nvcc: nothing compiled"
elif [ "$DRY" -eq 1 ]; then
  step build 240 bash -c compile_cuda_only
else
  step build 300 env MAX_JOBS="$JOBS" SPD_CUDA_ARCHS="${SPD_CUDA_ARCHS:-90}" \
    "$PY" -m pip install --no-build-isolation --no-deps -v -e .
fi
BUILD_RC=$?

if [ "$BUILD_RC" -eq 0 ]; then
  step backends 60 "$PY" -c "
import spd_kernels as sk
from spd_kernels import _ext
print('build_info', _ext.build_info() if _ext._C is not None else _ext.IMPORT_ERROR)
for name, reasons in sk.available_backends().items():
    print(f'{name:10s}', reasons or 'available')
if $((1 - DRY)):
    assert _ext.build_info().get('cuda'), 'extension built without CUDA'
    assert sk.available_backends()['cuda'] == [], sk.available_backends()['cuda']
    assert sk.available_backends()['triton'] == [], sk.available_backends()['triton']
"
  step gpu_tests 220 env SPD_GPU_TESTS="$GRID" "${PYTEST[@]}" --junitxml="$LOGS/gpu_tests.xml" \
    --durations=15 "${TESTS[@]}"
  if [ "$DRY" -eq 1 ]; then
    step smoke 120 "${PYTEST[@]}" tests/kernels/test_triton_gpu.py tests/kernels/test_cuda_gpu.py -k smoke
    skip memcheck "dry run: compute-sanitizer needs a GPU (the smoke selection ran in 'smoke')"
  elif SAN=$(find_sanitizer); then
    # No caching allocator: every tensor is its own cudaMalloc, so out-of-bounds accesses that
    # would land inside a cached block are caught. Autotuning off: one config, no benchmarking.
    step memcheck 100 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 SPD_TRITON_AUTOTUNE=0 "$SAN" --tool memcheck \
      --error-exitcode 9 --target-processes all "${PYTEST[@]}" tests/kernels/test_cuda_gpu.py \
      tests/kernels/test_triton_gpu.py -k "smoke and (float32 or bf16)"
    if [ "$FULL" -eq 1 ]; then
      step racecheck 120 "$SAN" --tool racecheck --error-exitcode 9 --target-processes all \
        "${PYTEST[@]}" tests/kernels/test_cuda_gpu.py -k "smoke and float32"
    fi
  else
    skip memcheck "compute-sanitizer not found (PATH, CUDA_HOME/bin, /usr/local/cuda/bin)"
    FAILED=1
  fi
  mkdir -p "$LOGS/bench_bsr" "$LOGS/bench_csr"
  if [ "$DRY" -eq 1 ]; then
    step bench_bsr 120 "$PY" benchmarks/gpu_bsr_bench.py --smoke --shapes 64x96 --blocks 32 \
      --sparsities 0.5 --dtype fp32 --out "$LOGS/bench_bsr"
    step bench_csr 60 "$PY" benchmarks/gpu_csr_bench.py --dry-run --device-name "NVIDIA H200" \
      --models bert-large --ms 128,16384 --dtypes bf16 --sweep 0.5,0.8,0.9,0.95 \
      --backends cuda,dense,cusparse,dense_gather,reference
  else
    # reduced grids, ~3 minutes together (BERT-large FFN shapes; the CSR sweep feeds the crossover)
    step bench_bsr 100 "$PY" benchmarks/gpu_bsr_bench.py --m 16384 --shapes 1024x4096,4096x1024 \
      --blocks 32,64 --sparsities 0.5,0.9 --warmup 10 --rep 40 --out "$LOGS/bench_bsr"
    step bench_csr 100 "$PY" benchmarks/gpu_csr_bench.py --models bert-large --ms 128,16384 --dtypes bf16 \
      --sweep 0.5,0.8,0.9,0.95 --backends cuda,dense,cusparse,dense_gather,reference --warmup-ms 10 \
      --rep-ms 40 --out "$LOGS/bench_csr"  # dense_compile: in bench_bsr (inductor compiles cost minutes here)
  fi
else
  skip tests "the build failed"
fi

# ----------------------------------------------------------------------------- at most 8 files
KEEP=(bench_bsr/gpu_bsr_bench.csv bench_bsr/gpu_bsr_bench.md bench_bsr/gpu_bsr_bench.png
  bench_csr/gpu_csr_bench.csv bench_csr/gpu_csr_summary.md bench_csr/gpu_csr_crossover.py)
for f in "${KEEP[@]}"; do
  [ -f "$LOGS/$f" ] && cp "$LOGS/$f" "$OUT/"
done
SUMMARY+=("$(printf '%-11s %ss of %ss budget' total "$((SECONDS - START))" "$BUDGET")")
{
  echo "gpu_check $([ "$DRY" -eq 1 ] && echo '--dry-run ')($GRID grid) at $(git rev-parse --short HEAD)"
  printf '%s\n' "${SUMMARY[@]}"
  grep -h -E '^(FAILED|ERROR) |[0-9]+ (passed|failed)' "$LOGS"/*.log 2>/dev/null | head -40
} >"$OUT/summary.txt"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
echo "=== summary (results in $OUT: $(ls "$OUT" | tr '\n' ' '))"
cat "$OUT/summary.txt"
exit "$FAILED"
