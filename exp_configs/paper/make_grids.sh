#!/usr/bin/env bash
# Regenerate the paper's grids from the base configs in exp_configs/paper/base/ with `main.py sweep`.
#
#   exp_configs/paper/<base name>/<criterion>_sparsity<s>_warmup<w>_seed<n>.json   (12 criteria x 5 x 2 x 3)
#   exp_configs/paper/<base name>/none_seed<n>.json                                   (dense baseline, 3 seeds)
#   exp_configs/paper/<structured name>/<criterion>_sparsity<s>_seed<n>.json from exp_configs/paper/structured/*.json:
#                                         structured pruning (Figure 4 of the second-order paper), 12 criteria x
#                                         structured sparsity 0.25 0.5 0.75 x 3 seeds + dense
#   exp_configs/paper/<preset name>/...   from exp_configs/paper/presets/*.json: the FTS paper's protocol for the
#                                         criteria of its Table 1 (8 of ours) x the Table 1 sparsities x 3 seeds
#
# Sparsities: 0.8 0.9 0.95 0.98 0.99, the FTS paper's Table 1 (exp_configs/paper/fts_table1.csv).
#
# One sweep per base with every criterion; if that fails (e.g. a criterion or dataset is not registered
# yet), one sweep per criterion, so that the ones that validate are still written.  Rerunnable: identical files are left alone, so run it again after a
# criterion lands to add its configs.  Extra arguments go to every sweep (e.g. --overwrite, --dry-run).
# Usage: PYTHON=.venv/bin/python exp_configs/paper/make_grids.sh [--overwrite]
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
HERE=exp_configs/paper
CRITERIA=${CRITERIA:-"random magnitude snip grad_norm grasp synflow fisher_diag fisher_pruner fts hutch_diag hutch_pruning hts"}
SPARSITIES=${SPARSITIES:-0.8,0.9,0.95,0.98,0.99}   # the FTS paper's Table 1
SEEDS=0,42,123
TABLE1_CRITERIA="random magnitude grad_norm snip grasp fisher_diag fisher_pruner fts"  # Table 1's, FBSS aside
WARMUPS=0,1
STRUCTURED_SPARSITIES=${STRUCTURED_SPARSITIES:-0.25,0.5,0.75}  # fraction of structures (heads, neurons) removed

failed=()
for base in "$HERE"/base/*.json; do
    name=$(basename "$base" .json)
    out="$HERE/$name"
    echo "== $name: dense"
    "$PY" main.py sweep "$base" --out "$out" "$@" \
        --set compressor.class=none --set general.seed=$SEEDS || failed+=("$name/none")
    grid=(--set compressor.sparsity=$SPARSITIES --set compressor.warmup=$WARMUPS --set general.seed=$SEEDS)
    echo "== $name: all criteria"
    if ! "$PY" main.py sweep "$base" --out "$out" "$@" --set compressor.class="${CRITERIA// /,}" "${grid[@]}"; then
        for crit in $CRITERIA; do
            echo "== $name: $crit"
            "$PY" main.py sweep "$base" --out "$out" "$@" --set compressor.class="$crit" "${grid[@]}" \
                || failed+=("$name/$crit")
        done
    fi
done
for base in "$HERE"/presets/*.json; do
    name=$(basename "$base" .json)
    out="$HERE/$name"
    echo "== preset $name: dense"
    "$PY" main.py sweep "$base" --out "$out" "$@" \
        --set compressor.class=none --set general.seed=$SEEDS || failed+=("$name/none")
    echo "== preset $name: Table 1 criteria"
    "$PY" main.py sweep "$base" --out "$out" "$@" --set compressor.class="${TABLE1_CRITERIA// /,}" \
        --set compressor.sparsity=$SPARSITIES --set general.seed=$SEEDS || failed+=("$name")
done
for base in "$HERE"/structured/*.json; do
    name=$(basename "$base" .json)
    out="$HERE/$name"
    echo "== structured $name: dense"
    "$PY" main.py sweep "$base" --out "$out" "$@" \
        --set compressor.class=none --set general.seed=$SEEDS || failed+=("$name/none")
    echo "== structured $name: all criteria"
    "$PY" main.py sweep "$base" --out "$out" "$@" --set compressor.class="${CRITERIA// /,}" \
        --set compressor.sparsity=$STRUCTURED_SPARSITIES --set general.seed=$SEEDS || failed+=("$name")
done
if ((${#failed[@]})); then
    echo "not generated (see the problems above; rerun this script once they are registered): ${failed[*]}"
    exit 1
fi
echo "all grids generated"
