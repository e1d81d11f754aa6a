#!/usr/bin/env bash
# The main job on the embedded default: synthetic TextZoom-style data -> (train -> distill -> export -> benchmark
# as those stages land). Outputs go to runs/demo/ (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/demo}
N=${N:-3000}

echo "== 1. synthesize $N TextZoom-style LR/HR pairs -> $OUT/data"
"$PY" -m distill.synth --out "$OUT/data" --n "$N" --seed 0 --overwrite --preview "$OUT/preview.png"
echo "== 2. inspect the training split"
"$PY" -m distill.data info "$OUT/data/train" --no-progress
