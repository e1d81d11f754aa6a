#!/usr/bin/env bash
# The GPU check (experiments/gpu_check.py) as one command for a short GPU slot; writes gpu_check.md/json to $OUT
# (or runs/gpu_check). Arguments go to the script (--smoke: the toy-size CPU run the test suite makes).
#
# The lent H200 has CUDA PyTorch, onnx, onnxruntime, opencv, numpy, pyyaml, pillow and tqdm, and no network. What
# else the run needs (the lmdb wheel, fonts for the synthetic words, svt_test) travels as one file,
# .gpu/payload.tar.xz (ignored by git), made here by
#   echo /.gpu/ >> .git/info/exclude; bash scripts/gpu_check.sh --pack
# and unpacked by this script on the device when asked with --payload (first argument):
#   device run: bash scripts/gpu_check.sh --payload --budget-s 300 2>&1 | tee $OUT/log.txt    (carry: .gpu; timeout 590)
# The report is rewritten after every stage, so a run cut short by its slot still returns the stages it finished.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
PAYLOAD=${GPU_PAYLOAD:-.gpu/payload.tar.xz}  # GPU_PAYLOAD: another file (the tests point it nowhere)

if [ "${1:-}" = "--pack" ]; then
  # lmdb for CPython 3.12 (the device's), 19 fonts (the synthetic words' variety), svt_test compacted (~4 MB)
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/whl" "$tmp/fonts" .gpu
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/whl" "lmdb==$("$PY" -c 'import lmdb; print(lmdb.__version__)')"
  cp /usr/share/fonts/truetype/liberation/*.ttf /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
     /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf /usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf "$tmp/fonts/"
  "$PY" -c "import lmdb, sys; lmdb.open(sys.argv[1], readonly=True, lock=False).copy(sys.argv[2], compact=True)" \
    "${REAL:-../shared/data/real/svt_test}" "$(mkdir -p "$tmp/svt_test" && echo "$tmp/svt_test")"
  tar -C "$tmp" -cJf "$PAYLOAD" whl fonts svt_test
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
  export PYTHONPATH=$site/site${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p ~/.fonts && cp "$site"/fonts/* ~/.fonts/  # distill.synth looks there among the font folders
  # the C extension: it packs crops ~3x faster per core than the NumPy twin, leaving the loader's cores to spare
  "$PY" setup.py -q build_ext --inplace >/dev/null 2>&1 || echo "gpu_check: C extension not built; the NumPy twin serves"
  case " $* " in *" --real "*) ;; *) EXTRA=(--real "$site/svt_test") ;; esac
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/gpu_check}
exec "$PY" -m experiments.gpu_check --work "$WORK" "${EXTRA[@]}" "$@"
