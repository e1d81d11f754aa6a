#!/usr/bin/env bash
# The GPU check (experiments/gpu_check.py: the default student's recipe at GPU scale) as one command for a short GPU
# slot; writes gpu_check.md/json to $OUT (or runs/gpu_check). Arguments go to the script (--smoke: the toy-size CPU
# run the test suite makes; --budget-s: seconds for the whole run).
#
# The lent GPU machine has CUDA PyTorch, onnx, onnxruntime, opencv, numpy, pyyaml, pillow and tqdm, and no network.
# What else the run needs travels as one file, .gpu/payload.tar.xz (ignored by git), made here by
#   bash scripts/gpu_check.sh --pack
# (the lmdb wheel, fonts for the synthetic words, the five real sets with ic15_train's PNG crops re-encoded as JPEG
# at quality 95 to fit the 64 MiB that can travel, and PP-OCRv6 small's recognizer at the path the rapidocr wheel
# gives it), and unpacked by this script on the device when asked with --payload (first argument):
#   device run: bash scripts/gpu_check.sh --payload --budget-s 500 2>&1 | tee $OUT/log.txt   (carry: .gpu; timeout 590)
# The report is rewritten after every stage, so a run cut short by its slot still returns the stages it finished.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
PAYLOAD=${GPU_PAYLOAD:-.gpu/payload.tar.xz}  # GPU_PAYLOAD: another file (the tests point it nowhere)
REAL=${REAL:-../shared/data/real}

if [ "${1:-}" = "--pack" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/whl" "$tmp/fonts" "$tmp/real" "$tmp/rapidocr/models" "$(dirname "$PAYLOAD")"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/whl" "lmdb==$("$PY" -c 'import lmdb; print(lmdb.__version__)')"
  cp /usr/share/fonts/truetype/liberation/*.ttf /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
     /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf /usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf "$tmp/fonts/"
  for s in iiit5k_train svt_train ic15_train svt_test vn_plates_valid; do
    PYTHONPATH=$PWD "$PY" -c "import sys; from experiments.gpu_check import compact_lmdb; compact_lmdb(*sys.argv[1:])" \
      "$REAL/$s" "$tmp/real/$s"
  done
  cp "$("$PY" -c 'from runtime.zoo import find; print(find("ppocrv6").path())')" "$tmp/rapidocr/models/"
  touch "$tmp/rapidocr/__init__.py"
  tar -C "$tmp" -cJf "$PAYLOAD" whl fonts real rapidocr
  ls -l "$PAYLOAD"
  exit 0
fi

EXTRA=()
if [ "${1:-}" = "--payload" ]; then
  shift
  [ -f "$PAYLOAD" ] || { echo "error: $PAYLOAD: missing; make it with: bash scripts/gpu_check.sh --pack" >&2; exit 2; }
  site=/tmp/gpu_payload
  rm -rf "$site" && mkdir -p "$site" && tar -C "$site" -xJf "$PAYLOAD"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site/site" "$site"/whl/*.whl
  mv "$site/rapidocr" "$site/site/"  # the teacher where runtime.zoo looks for the rapidocr wheel's files
  export PYTHONPATH=$site/site${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p ~/.fonts && cp "$site"/fonts/* ~/.fonts/  # distill.synth looks there among the font folders
  # the C extension: it packs crops ~3x faster per core than the NumPy twin, leaving the loader's cores to spare
  "$PY" setup.py -q build_ext --inplace >/dev/null 2>&1 || echo "gpu_check: C extension not built; the NumPy twin serves"
  case " $* " in *" --real "*) ;; *) EXTRA=(--real "$site/real") ;; esac
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/gpu_check}
exec "$PY" -m experiments.gpu_check --work "$WORK" "${EXTRA[@]}" "$@"
