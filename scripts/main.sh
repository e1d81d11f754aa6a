#!/usr/bin/env bash
# The main job on the embedded default, end to end on a CPU in a few minutes:
#   synthesize TextZoom-style pairs -> train an HR teacher -> distill its LR student (KD-LTR) -> evaluate,
#   then the same evaluation of the shipped default weights
# (export and benchmark stages join as they land). Outputs go to runs/demo/ (override with OUT=..., N=..., STEPS=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/demo}
N=${N:-3000}
STEPS=${STEPS:-60}
COMMON=(--config configs/smoke.yaml --set "data.synth.dir=$OUT/data" --set "data.synth.n=$N" --set "optim.steps=$STEPS"
        --set "train.val_every=$STEPS" --set "train.ckpt_every=$STEPS" --set train.progress=false)

echo "== 1. synthesize $N TextZoom-style LR/HR pairs -> $OUT/data"
"$PY" -m distill.synth --out "$OUT/data" --n "$N" --seed 0 --overwrite --preview "$OUT/preview.png" \
  --split-sizes train=0.8,val=0.1,test=0.1 --no-progress
"$PY" -m distill.data info "$OUT/data/train" --no-progress
echo "== 2. train the HR teacher ($STEPS steps)"
"$PY" -m distill.train "${COMMON[@]}" --set "train.out_dir=$OUT/teacher"
echo "== 3. distill its LR student with KD-LTR ($STEPS steps)"
"$PY" -m distill.train "${COMMON[@]}" --set "train.out_dir=$OUT/student" --set train.stage=student \
  --set "train.teacher_ckpt=$OUT/teacher/best.pt"
echo "== 4. evaluate: student on LR, teacher on HR and on bicubic-upsampled LR"
DATA=("$OUT/data")
[ -d ../shared/data/real/svt_test ] && DATA+=(../shared/data/real/svt_test)
"$PY" -m distill.evaluate --ckpt "$OUT/student/best.pt" --teacher "$OUT/teacher/best.pt" --data "${DATA[@]}" \
  --max-samples 200 --json "$OUT/eval.json"
# A few CPU minutes of training learn little; the shipped weights (weights/MODEL_CARD.md) show what the recipe reaches.
if [ -f weights/ctc-student-lr.pt ]; then
  echo "== 5. the shipped default weights on the same data (CNN-CTC teacher and KD-LTR student)"
  "$PY" -m distill.evaluate --ckpt weights/ctc-student-lr.pt --teacher weights/ctc-teacher-hr.pt --data "${DATA[@]}" \
    --max-samples 200 --json "$OUT/eval_shipped.json"
fi
