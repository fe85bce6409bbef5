#!/usr/bin/env bash
# Regenerate the offline digits grid (issue 5) from base.json; safe to rerun (identical files are kept).
#   3 criteria x 3 sparsities x 2 warmups x 3 seeds + 3 dense baselines = 57 configs in grid/
#   + random with 3 estimator seeds at 2 sparsities (mask-stability figure) = 6 configs in grid/
# Then:  python main.py run exp_configs/digits_grid/grid --results results/digits_grid
#        python main.py report results/digits_grid --out reports/digits_grid --sweep exp_configs/digits_grid/grid
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
HERE=exp_configs/digits_grid
"$PY" main.py sweep "$HERE/base.json" --out "$HERE/grid" --with-dense "$@" \
    --set compressor.class=random,magnitude,snip \
    --set compressor.sparsity=0.8,0.9,0.95 \
    --set compressor.warmup=0,1 \
    --set general.seed=0,1,2
"$PY" main.py sweep "$HERE/base.json" --out "$HERE/grid" "$@" \
    --set compressor.class=random \
    --set compressor.sparsity=0.9,0.95 \
    --set compressor.options.seed=1,2,3
