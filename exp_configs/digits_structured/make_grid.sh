#!/usr/bin/env bash
# Regenerate the digits-scale structured grid (the second-order PaI paper's Figure 4 setting, shrunk to the
# offline digits data) from base.json; safe to rerun (identical files are kept).
#   6 criteria x 2 structured sparsities (fraction of heads + MLP neurons removed) + 1 dense baseline = 13 configs
# Then:  python main.py run exp_configs/digits_structured/grid --results results/digits_structured
#        python exp_configs/digits_structured/equal_params.py results/digits_structured   # unstructured twins
#        python main.py report results/digits_structured --out reports/digits_structured
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
HERE=exp_configs/digits_structured
"$PY" main.py sweep "$HERE/base.json" --out "$HERE/grid" --with-dense "$@" \
    --set compressor.class=random,magnitude,snip,grasp,fts,hts \
    --set compressor.sparsity=0.25,0.5
