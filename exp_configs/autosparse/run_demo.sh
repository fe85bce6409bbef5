#!/usr/bin/env bash
# AutoSparse walk-through on digits (offline, CPU; a few minutes on 2 cores).
#   1. iterative rewind pruning (magnitude, 5 iterations of 3 epochs, 98% sparsity) for seeds 0 and 2
#   2. fit the predictor on both autos_dataset.pt files, evaluated on the held-out dataset (seed 2)
#   3. prune seed 1 at 98% with autosparse, snip, magnitude and random (pbt) and PaT magnitude
#   4. the report table
# Run from the repository root:  bash exp_configs/autosparse/run_demo.sh [PYTHON]
set -euo pipefail
# one intra-op thread: the tiny digits CNN is several times faster so on a small (or busy) CPU
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${1:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
RES=results/autosparse
$PY main.py run exp_configs/autosparse/irp_digits_seed0.json exp_configs/autosparse/irp_digits_seed2.json --results "$RES"
DATASETS=$(ls "$RES"/irp/digits/digits_cnn/magnitude/0.98/seed_0-*/autos_dataset.pt \
              "$RES"/irp/digits/digits_cnn/magnitude/0.98/seed_2-*/autos_dataset.pt)
$PY main.py autos-train $DATASETS --out "$RES/predictor.pt" --holdout dataset --epochs 20 --seed 0
# --force: the autosparse run must follow a re-trained predictor (the run folder hashes only its path)
$PY main.py run exp_configs/autosparse/compare --results "$RES" --force
$PY main.py report "$RES" --out "$RES/report"
