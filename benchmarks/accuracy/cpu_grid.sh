#!/usr/bin/env bash
# The README's accuracy table on CPU: the embedded MiniLM-L6 + Rotten Tomatoes, 90 % sparsity of
# all 36 encoder linears, methods x granularities x seeds, JOBS single-thread runs side by side.
#   bash benchmarks/accuracy/cpu_grid.sh            # everything under runs/acc (about 80 min, 2 cores)
#   OUT=runs/x SEEDS="1" METHODS="spd" GRANS="element" bash benchmarks/accuracy/cpu_grid.sh
# Then: python -m spd compare runs/acc/* --group
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/acc}
SEEDS=${SEEDS:-"1 2"}
METHODS=${METHODS:-"spd soft-movement magnitude"}
GRANS=${GRANS:-"element block32"}
JOBS=${JOBS:-2}
TRAIN=${TRAIN:-4096}
export PYTHONPATH=$PWD:$PWD/python HF_HUB_OFFLINE=1
COMMON="--max-train-samples $TRAIN --max-length 48 --batch-size 32 --no-progress --log-every 8"
mkdir -p "$OUT"
if [ ! -f "$OUT/teacher/results.json" ]; then
  /usr/bin/time -f "teacher %e s" $PY -m spd finetune --epochs 2 --lr 1e-4 --seed 1 --threads "$JOBS" \
    --output-dir "$OUT/teacher" $COMMON > "$OUT/teacher.log" 2>&1
fi
jobs_file=$(mktemp)
for s in $SEEDS; do for g in $GRANS; do for m in $METHODS; do
  [ -f "$OUT/$m-$g-s$s/results.json" ] && continue                   # done
  pgrep -f -- "--output-dir $OUT/$m-$g-s$s " > /dev/null && continue   # running (another call)
  extra="--kd"; [ "$m" = spd ] && extra=""
  echo "$PY -m spd prune --method $m --teacher $OUT/teacher/best --sparsity 0.9 --granularity $g \
--prune-epochs 2 --final-epochs 1 --prune-lr 3e-4 --final-lr 1e-4 --update-every 4 $extra \
--seed $s --threads 1 --output-dir $OUT/$m-$g-s$s $COMMON > $OUT/$m-$g-s$s.log 2>&1" >> "$jobs_file"
done; done; done
# each line is one run; JOBS of them at a time
tr '\n' '\0' < "$jobs_file" | xargs -0 -P "$JOBS" -I{} bash -c \
  't=$SECONDS; if {}; then echo "$((SECONDS-t)) s: {}"; else echo "FAILED after $((SECONDS-t)) s: {}"; fi >> '"$OUT"'/times.txt'
rm -f "$jobs_file"
$PY -m spd compare "$OUT"/*/ --group
