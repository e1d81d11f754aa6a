#!/usr/bin/env bash
# The main job: the whole toolkit on the shipped default, in under 10 minutes on a 2-core CPU.
#   1. distill    KD-LTR: the LR (16x64) twin of the shipped CNN teacher (weights/ctc-teacher-hr.pt), initialised
#                 from its weights, learns from it on synthetic LR/HR pairs (and the shared real crops when present);
#                 validated as it trains, then evaluated beside the teacher on HR and on bicubic-upsampled LR and
#                 beside the shipped student (the same recipe trained 2453 steps)
#   2. compress   ONNX export (parity gate), INT8 calibrated on real crops, the accuracy gate
#   3. runtime    the camera app headless on a rendered video of 16 moving words: the INT8 student of step 2 and
#                 the shipped default model (the PP-OCRv6 student), each writing an annotated mp4, a contact sheet
#                 PNG and the JSONL, scored against the truth; then 16 real word crops filmed through a simulated
#                 camera (shake, blur, noise, JPEG), read through 16 regions with the default model
#   4. benchmark  the accuracy/speed table and plot against PP-OCRv6 small and tiny on svt_test
# Outputs go to OUT (default runs/demo). STAGES=distill,compress,runtime,benchmark picks stages (later stages use
# what earlier ones wrote, else the shipped weights); STEPS (default 150) sets the training length.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/demo}
STEPS=${STEPS:-150}
STAGES=${STAGES:-distill,compress,runtime,benchmark}
REAL=${REAL:-../shared/data/real}
mkdir -p "$OUT"
has() { [[ ",$STAGES," == *",$1,"* ]]; }
t0=$(date +%s)
say() { echo; echo "== [$(( $(date +%s) - t0 )) s] $*"; }

EVAL_DATA=("$OUT/data")
[ -d "$REAL/svt_test" ] && EVAL_DATA+=("$REAL/svt_test")
STUDENT=weights/ctc-student-lr.pt
if has distill; then
  say "1. distill: 2000 synthetic LR/HR pairs -> $OUT/data"
  "$PY" -m distill.synth --out "$OUT/data" --n 2000 --seed 0 --overwrite --preview "$OUT/pairs.png" \
    --split-sizes train=0.9,val=0.05,test=0.05 --no-progress
  REAL_SETS=()
  if [ -d "$REAL/iiit5k_train" ]; then
    REAL_SETS=(--set "data.train=[{path: $REAL/iiit5k_train, weight: 0.15}, {path: $REAL/svt_train, weight: 0.05}]")
  else
    REAL_SETS=(--set "data.train=[]" --set data.synth.weight=1.0)
  fi
  say "1. distill: KD-LTR, $STEPS steps of 64 (configs/ship_ctc.yaml), validated every 50"
  "$PY" -m distill.train --config configs/ship_ctc.yaml --set train.stage=student \
    --set train.teacher_ckpt=weights/ctc-teacher-hr.pt \
    --set "data.synth.dir=$OUT/data" --set data.synth.n=2000 --set "data.synth.split_sizes=train=0.9,val=0.05,test=0.05" \
    "${REAL_SETS[@]}" --set "optim.steps=$STEPS" --set "train.out_dir=$OUT/student" \
    --set train.val_every=50 --set "train.ckpt_every=$STEPS" --set data.max_val_samples=300
  say "1. distill: the new student, the shipped one, and the teacher on HR and on bicubic-upsampled LR"
  "$PY" -m distill.evaluate --ckpt "$OUT/student/best.pt" --teacher weights/ctc-teacher-hr.pt \
    --data "${EVAL_DATA[@]}" --max-samples 300 --json "$OUT/eval_student.json"
  "$PY" -m distill.evaluate --ckpt "$STUDENT" --data "${EVAL_DATA[@]}" --max-samples 300 --json "$OUT/eval_shipped.json"
  STUDENT="$OUT/student/best.pt"
elif [ -f "$OUT/student/best.pt" ]; then
  STUDENT="$OUT/student/best.pt"
fi

STEM=$(basename "$STUDENT" .pt)
INT8="$OUT/export/$STEM.int8.onnx"
if has compress; then
  CALIB="$OUT/data"; [ -d "$REAL/iiit5k_train" ] && CALIB="$REAL/iiit5k_train"
  GATE="$OUT/data/val"; [ -d "$REAL/svt_train" ] && GATE="$REAL/svt_train"
  say "2. compress: ONNX (parity gate), INT8 calibrated on $CALIB, accuracy gate on $GATE"
  "$PY" -m compress.export --ckpt "$STUDENT" --out "$OUT/export" --int8 --calib "$CALIB" --calib-n 512 \
    --calibrator percentile --int8-float-convs 2 --gate-data "$GATE" --gate-n 300
fi
[ -f "$INT8" ] || INT8=weights/ctc-student-lr.int8.onnx

if has runtime; then
  say "3. runtime: a rendered 1280x720 video of 16 moving words"
  "$PY" -m apps.synthetic_video "$OUT/words.mp4" --words 16 --frames 150
  for run in "student:$INT8" "default:"; do
    name=${run%%:*}; model=${run#*:}
    say "3. runtime: apps.camera headless, ${model:-the shipped default model}, PP-OCRv6 tiny detector"
    "$PY" -m apps.camera --source "$OUT/words.mp4" --detector ppocrv6-tiny-det --headless --async-detect \
      ${model:+--model "$model"} --out "$OUT/camera_$name.mp4" --jsonl "$OUT/camera_$name.jsonl" \
      --contact-sheet "$OUT/camera_$name.png"
    "$PY" -m apps.benchmark score --jsonl "$OUT/camera_$name.jsonl" --truth "$OUT/words.mp4.truth.json" --skip 30
  done
  if [ -d "$REAL/ic15_train" ]; then
    say "3. runtime: 16 real word crops filmed through a simulated camera, 16 regions, default model, scheduled"
    "$PY" -m apps.synthetic_video "$OUT/real.mp4" --crops "$REAL/ic15_train" "$REAL/iiit5k_train" \
      "$REAL/svt_train" --words 16 --frames 300 --speed 0 --rois "$OUT/real_rois.txt"
    "$PY" -m apps.camera --source "$OUT/real.mp4" --roi-file "$OUT/real_rois.txt" --headless \
      --jsonl "$OUT/camera_real.jsonl" --contact-sheet "$OUT/camera_real.png"
    "$PY" -m apps.benchmark score --jsonl "$OUT/camera_real.jsonl" --truth "$OUT/real.mp4.truth.json"
  fi
fi

if has benchmark; then
  if [ -d "$REAL/svt_test" ]; then
    say "4. benchmark: students vs PP-OCRv6 small and tiny on svt_test (300 crops, HR / lr16 / lr16blur)"
    MODELS=(weights/ppocrv6-student-lr.onnx "$INT8" ppocrv6 ppocrv6-tiny)  # Tesseract (4 crops/s): README
    "$PY" -m apps.benchmark run --models "${MODELS[@]}" --data "$REAL/svt_test" --lr-from-hr --max-samples 300 \
      --runs 10 --json "$OUT/bench.json" --plot "$OUT/bench.png"
  else
    echo "benchmark: skipped, no $REAL/svt_test"
  fi
fi

say "done. Outputs in $OUT:"
ls "$OUT" | sed 's/^/  /'
