#!/usr/bin/env bash
# The accuracy grid on CPU: the embedded MiniLM-L6 + Rotten Tomatoes (the whole training split,
# 10246 sentences; the whole test split, 1281), 90 % sparsity of all 36 encoder linears, methods x
# granularities x seeds, each method at its reference defaults (baselines with logit KD, as in the
# papers' tables), JOBS runs side by side. Finished runs are skipped and every run that finishes
# is merged into benchmarks/results/accuracy_cpu.csv at once, so the grid can be run in parts:
#   bash benchmarks/accuracy/cpu_grid.sh                                 # everything under runs/acc
#   SEEDS=1 METHODS=spd GRANS=element JOBS=1 bash benchmarks/accuracy/cpu_grid.sh   # one run
#   SEEDS=1 METHODS=spd GRANS="element block32 block16 block8 block8x1 block16x1 block4x4" \
#     bash benchmarks/accuracy/cpu_grid.sh          # the accuracy-speed frontier's SPD points
# Then: python benchmarks/accuracy/table.py --from-csv benchmarks/results/accuracy_cpu.csv
# Any blockMxN granularity runs; a layout without a measured sparse kernel trains on the masked
# dense product (the crossover table has no entry for it). A run directory that already holds
# results.json is skipped: runs made before the methods changed (SPD as published, the
# progressive baselines) must be moved away to be rerun; the teacher can stay.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/acc}
CSV=${CSV:-benchmarks/results/accuracy_cpu.csv}
SEEDS=${SEEDS:-"1 2"}
METHODS=${METHODS:-"spd soft-movement movement magnitude"}
GRANS=${GRANS:-"element block32"}
JOBS=${JOBS:-1}
THREADS=${THREADS:-$((2 / JOBS > 0 ? 2 / JOBS : 1))}
LIMIT=${TRAIN:+--max-train-samples $TRAIN}
export PYTHONPATH=$PWD:$PWD/python HF_HUB_OFFLINE=1
COMMON="--max-length 48 --batch-size 32 --no-progress --log-every 8 $LIMIT"
mkdir -p "$OUT"
if [ ! -f "$OUT/teacher/results.json" ]; then
  /usr/bin/time -f "teacher %e s" $PY -m spd finetune --epochs 2 --lr 1e-4 --seed 1 --threads 2 \
    --output-dir "$OUT/teacher" $COMMON > "$OUT/teacher.log" 2>&1
fi
$PY benchmarks/accuracy/table.py "$OUT" --csv "$CSV" --append > /dev/null
jobs_file=$(mktemp)
for s in $SEEDS; do for g in $GRANS; do for m in $METHODS; do
  [ -f "$OUT/$m-$g-s$s/results.json" ] && continue                   # done
  pgrep -f -- "--output-dir $OUT/$m-$g-s$s " > /dev/null && continue   # running (another call)
  extra="--kd"; [ "$m" = spd ] && extra=""
  echo "$PY -m spd prune --method $m --teacher $OUT/teacher/best --sparsity 0.9 --granularity $g \
--prune-epochs 2 --final-epochs 1 $extra --seed $s --threads $THREADS --output-dir $OUT/$m-$g-s$s $COMMON \
> $OUT/$m-$g-s$s.log 2>&1" >> "$jobs_file"
done; done; done
# each line is one run; JOBS of them at a time; each finished run lands in the CSV at once
tr '\n' '\0' < "$jobs_file" | xargs -0 -r -P "$JOBS" -I{} bash -c \
  't=$SECONDS; if {}; then echo "$((SECONDS-t)) s: {}"; else echo "FAILED after $((SECONDS-t)) s: {}"; fi >> '"$OUT"'/times.txt; flock '"$OUT"'/.csv.lock '"$PY"' benchmarks/accuracy/table.py '"$OUT"' --csv '"$CSV"' --append > /dev/null'
rm -f "$jobs_file"
$PY benchmarks/accuracy/table.py --from-csv "$CSV"
