#!/usr/bin/env bash
# The GPU check (experiments/gpu_check.py) as one command for a short GPU slot; writes gpu_check.md/json to $OUT
# (or runs/gpu_check). Arguments go to the script (--smoke: the toy-size CPU run the test suite makes).
#
# On the lent H200 (CUDA PyTorch, onnx, onnxruntime, opencv, numpy, pyyaml; no network), the other packages travel
# as wheels in .whl/ and svt_test in .svt/ (both ignored by git, named in the run's carry):
#   echo /.whl/ >> .git/info/exclude; echo /.svt/ >> .git/info/exclude; cp -r ../shared/data/real/svt_test .svt
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl lmdb tqdm pillow
#   device run: bash scripts/gpu_check.sh --real .svt/svt_test      (carry: .whl, .svt; timeout 560)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the C extension is optional: the NumPy twin serves when it is not built here
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/gpu_check}
exec "$PY" -m experiments.gpu_check --work "$WORK" "$@"
