#!/usr/bin/env bash
# Every pruning criterion on digits (issue 20): the comparison table of docs/criteria.md, from base.json.
#   criteria   every name of compressors.pruning_criteria() at the time of the run (new criteria join in)
#   x sparsity 0.9, 0.98, 0.99  x seeds 0, 1, 2, plus the dense baseline per seed, into grid/
#   autosparse: its predictor is fitted first (as exp_configs/autosparse/run_demo.sh does, but on IRP runs of
#   seeds 100 and 101, which the grid never uses) into results/digits_compare_predictor/predictor.pt; an
#   existing predictor there is reused.  The autosparse configs of grid/ name that file.
# Then the grid runs on 2 local workers into results/digits_compare (completed runs are skipped, failed
# ones are recorded as failed and listed with their reason), the report goes to reports/digits_compare,
# and its tables (table.md, table_connectivity.md) and issues.csv are copied into
# docs/figures/digits_compare/.
# Run from anywhere:  bash exp_configs/digits_compare/make.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
# one intra-op thread per run: the tiny digits CNN trains fastest so, and 2 workers share the 2 cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${1:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
HERE=exp_configs/digits_compare
GRID=$HERE/grid
RES=results/digits_compare
PRED_RES=results/digits_compare_predictor
PREDICTOR=$PRED_RES/predictor.pt
REPORT=reports/digits_compare
DOCS=docs/figures/digits_compare
START=$SECONDS
stamp() { echo "[make.sh $(date +%H:%M:%S), +$((SECONDS - START)) s] $*"; }

CRITERIA=$("$PY" -c "import compressors; print(','.join(c for c in compressors.pruning_criteria() if c != 'autosparse'))")
WITH_AUTOSPARSE=$("$PY" -c "import compressors; print(int('autosparse' in compressors.pruning_criteria()))")
stamp "criteria: $CRITERIA$([ "$WITH_AUTOSPARSE" = 1 ] && echo ",autosparse")"

# 1. the AutoSparse predictor (skipped when it exists; then the autosparse runs are not forced)
FORCE_AUTOSPARSE=()
if [ "$WITH_AUTOSPARSE" = 1 ] && [ ! -f "$PREDICTOR" ]; then
    stamp "fitting the AutoSparse predictor"
    "$PY" main.py sweep exp_configs/autosparse/irp_digits_seed0.json --out "$HERE/predictor" --overwrite \
        --set seed=100,101
    "$PY" main.py run "$HERE/predictor" --results "$PRED_RES" --launcher local --workers 2
    DATASETS=$(ls "$PRED_RES"/irp/digits/digits_cnn/magnitude/0.98/seed_100-*/autos_dataset.pt \
                  "$PRED_RES"/irp/digits/digits_cnn/magnitude/0.98/seed_101-*/autos_dataset.pt)
    # shellcheck disable=SC2086
    "$PY" main.py autos-train $DATASETS --out "$PREDICTOR" --holdout dataset --epochs 20 --seed 0
    # the run folder hashes only the predictor's path: runs of an older predictor must be redone
    FORCE_AUTOSPARSE=(--force)
fi

# 2. the grid (every file is validated before any is written)
stamp "writing $GRID"
"$PY" main.py sweep "$HERE/base.json" --out "$GRID" --overwrite --with-dense \
    --set criterion="$CRITERIA" \
    --set sparsity=0.9,0.98,0.99 \
    --set seed=0,1,2
if [ "$WITH_AUTOSPARSE" = 1 ]; then
    # the predictor's path goes into a base of its own first, so that it does not spell out every file name
    BASE_AUTOS=$(mktemp -d)
    trap 'rm -rf "$BASE_AUTOS"' EXIT
    "$PY" main.py sweep "$HERE/base.json" --out "$BASE_AUTOS" --set general.id=digits_compare --set criterion=autosparse \
        --set compressor.options.predictor="$PREDICTOR"
    "$PY" main.py sweep "$BASE_AUTOS"/*.json --out "$GRID" --overwrite \
        --set criterion=autosparse \
        --set sparsity=0.9,0.98,0.99 \
        --set seed=0,1,2
fi

# 3. the runs (a failed run does not stop the others; the report lists it)
stamp "running $GRID into $RES"
if [ ${#FORCE_AUTOSPARSE[@]} -gt 0 ]; then
    "$PY" main.py run "$GRID"/autosparse_*.json --results "$RES" --launcher local --workers 2 --force || true
fi
"$PY" main.py run "$GRID" --results "$RES" --launcher local --workers 2 || true
stamp "grid done"

# 4. the report and its tables in the docs
"$PY" main.py report "$RES" --out "$REPORT" --sweep "$GRID" --sparsity 0.99
mkdir -p "$DOCS"
cp "$REPORT/table.md" "$REPORT/table_connectivity.md" "$REPORT/issues.csv" "$DOCS/"
stamp "report in $REPORT; tables in $DOCS"
