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
# Sparsities: 0.8 0.9 0.95 0.98 0.99, the FTS paper's Table 1 (docs/reference/fts_table1.csv).
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

EXTRA=("$@")
failed=()
# grid NAME BASE "CRITERIA" AXES...: the dense baseline once per seed and every criterion over AXES x seeds into
# exp_configs/paper/NAME/; when the sweep of all criteria fails, one sweep per criterion, so those that
# validate are still written
grid() {
    local name=$1 base=$2 criteria=$3 crit
    shift 3
    local out="$HERE/$name" axes=("$@" --set general.seed=$SEEDS)
    echo "== $name: dense"
    "$PY" main.py sweep "$base" --out "$out" "${EXTRA[@]}" --set compressor.class=none --set general.seed=$SEEDS \
        || failed+=("$name/none")
    echo "== $name: $criteria"
    if ! "$PY" main.py sweep "$base" --out "$out" "${EXTRA[@]}" --set compressor.class="${criteria// /,}" "${axes[@]}"; then
        for crit in $criteria; do
            echo "== $name: $crit"
            "$PY" main.py sweep "$base" --out "$out" "${EXTRA[@]}" --set compressor.class="$crit" "${axes[@]}" \
                || failed+=("$name/$crit")
        done
    fi
}
for base in "$HERE"/base/*.json; do
    grid "$(basename "$base" .json)" "$base" "$CRITERIA" --set compressor.sparsity=$SPARSITIES \
        --set compressor.warmup=$WARMUPS
done
for base in "$HERE"/presets/*.json; do  # the FTS protocol: Table 1's criteria and sparsities
    grid "$(basename "$base" .json)" "$base" "$TABLE1_CRITERIA" --set compressor.sparsity=$SPARSITIES
done
for base in "$HERE"/structured/*.json; do  # structured pruning: fraction of structures removed
    grid "$(basename "$base" .json)" "$base" "$CRITERIA" --set compressor.sparsity=$STRUCTURED_SPARSITIES
done
if ((${#failed[@]})); then
    echo "not generated (see the problems above; rerun this script once they are registered): ${failed[*]}"
    exit 1
fi
echo "all grids generated"
