#!/usr/bin/env bash
# Wall time of whole `spd prune` runs, this checkout against another one (e.g. the previous
# main: `git worktree add /tmp/base <commit>` and copy the built spd_kernels/_C*.so into it),
# run one after the other on the same machine. The teacher is fine-tuned once (this checkout)
# and shared. This checkout is timed with a cold teacher cache, then again with it warm. Rows are
# appended to CSV in the profiler's schema (spd_kernels.profiling.CSV_COLUMNS + wall_s).
#
#   bash benchmarks/bench_training_whole_run.sh /tmp/base [CSV]
set -euo pipefail
BASE=${1:?usage: bench_training_whole_run.sh BASELINE_CHECKOUT [CSV]}
HERE=$(cd "$(dirname "$0")/.." && pwd)
CSV=${2:-$HERE/benchmarks/results/training_whole_run.csv}
PY=${PYTHON:-$HERE/.venv/bin/python}
WORK=$(mktemp -d)  # paths under it are written as $WORK in the CSV
export SPD_CACHE=$WORK/cache
DATA=(--max-train-samples 1024 --max-eval-samples 256 --max-length 64 --batch-size 32 --threads 2 --seed 1 --no-progress)
run() {  # label code-dir args...
  local label=$1 src=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  PYTHONPATH="$src:$src/python" "$PY" -m spd "$@" "${DATA[@]}" > "$WORK/$label.log" 2>&1
  t1=$(date +%s.%N)
  # one row of the profiler's CSV (op whole_run, impl = label, p20 = p50 = p80 = the wall time)
  PYTHONPATH="$HERE" "$PY" - "$CSV" "$label" "$(echo "$t1 - $t0" | bc)" "spd ${*//$WORK/\$WORK}" <<'EOF'
import os, sys
from spd_kernels.profiling import base_row, environment, read_csv, write_csv
path, label, wall, command = sys.argv[1:]
rows = read_csv(path) if os.path.exists(path) else []
ms, wall = float(wall) * 1e3, f"{float(wall):.1f}"
rows.append(base_row(environment("cpu", 2), command, op="whole_run", impl=label, dtype="float32", p20_ms=ms,
                     p50_ms=ms, p80_ms=ms, samples=1, status="ok", note="one run, wall clock", wall_s=wall))
write_csv(rows, path, extra=("wall_s",))
print(label, wall, "s")
EOF
}
PYTHONPATH="$HERE:$HERE/python" "$PY" -m spd finetune --epochs 1 --output-dir "$WORK/teacher" "${DATA[@]}" > "$WORK/teacher.log" 2>&1
T=$WORK/teacher/best
COMMON=(--teacher "$T" --sparsity 0.9 --granularity element --prune-epochs 1 --final-epochs 1)
run base-spd "$BASE" prune --method spd "${COMMON[@]}" --output-dir "$WORK/base-spd"
run new-spd-cold "$HERE" prune --method spd "${COMMON[@]}" --output-dir "$WORK/new-spd"
run new-spd-warm "$HERE" prune --method spd "${COMMON[@]}" --output-dir "$WORK/new-spd2"
run base-soft "$BASE" prune --method soft-movement --kd "${COMMON[@]}" --output-dir "$WORK/base-soft"
run new-soft-cold "$HERE" prune --method soft-movement --kd "${COMMON[@]}" --output-dir "$WORK/new-soft"
run new-soft-warm "$HERE" prune --method soft-movement --kd "${COMMON[@]}" --output-dir "$WORK/new-soft2"
rm -rf "$WORK"
